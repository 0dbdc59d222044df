"""nmr.data."""
