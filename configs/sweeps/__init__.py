"""Sweep files: `get_config()` (the base experiment) and `get_sweep()` (field -> values)."""
