"""nmr.inference."""
