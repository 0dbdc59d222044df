"""The `nmr` umbrella command: one verb per module, imported only when that verb runs."""
