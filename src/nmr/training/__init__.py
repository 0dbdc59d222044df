"""nmr.training."""
