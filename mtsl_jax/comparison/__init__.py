"""Reproducing the paper's comparison: grid, runner, per-run records and the report."""
