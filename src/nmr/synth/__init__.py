"""nmr.synth."""
