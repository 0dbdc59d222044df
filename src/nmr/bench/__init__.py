"""nmr.bench."""
