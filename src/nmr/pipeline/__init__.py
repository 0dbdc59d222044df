"""nmr.pipeline."""
