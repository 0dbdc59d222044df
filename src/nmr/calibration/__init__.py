"""`nmr calibrate`: the rig (poses, LWIR focal length and time offset) from unlabelled bags."""
