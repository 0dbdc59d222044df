"""nmr.ros."""
