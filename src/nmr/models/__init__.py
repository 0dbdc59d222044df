"""nmr.models."""
