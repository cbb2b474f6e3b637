"""Experiment configs, one per file, each defining `get_config()`; sweeps in `sweeps/`.

Read by path (`--config configs/default.py`, `config_files.load_config_file`), not
imported. Installed with the package as `mtsl_jax.configs`, so that a 'configs/...'
path also resolves from any directory (`config_files.find_config_file`).
"""
