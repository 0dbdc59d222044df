"""nmr.evaluation."""
