"""Run a sweep: `python launch/sweep.py --sweep configs/sweeps/lr_synthetic.py --dir DIR`.

The sweep file defines `get_config()` (the base experiment) and `get_sweep()` (field ->
list of values; 'seed' included). Rerunning the same command skips finished runs and
resumes interrupted ones. DIR/summary.csv holds one row per run. `--vmap_seeds` trains
the seeds of otherwise equal combinations as one vmapped program (see mtsl_jax/seed_batch.py;
seeds that cannot share a program run one after another); results match, to float rounding.

Installed as `mtsl-sweep` (`mtsl_jax.cli.commands`); `python launch/sweep.py` runs it from
a clone.
"""

import pathlib
import sys

from absl import flags

from mtsl_jax import config_files, exit_codes, sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file with get_config() and get_sweep().")
_DIR = flags.DEFINE_string("dir", None, "Sweep directory (default workdirs/sweeps/<name>).")
_VMAP_SEEDS = flags.DEFINE_bool("vmap_seeds", False,
                                "Train the seeds of each combination as one vmapped program.")


def main() -> int:
  """Runs the sweep's unfinished runs and prints the best; the exit status."""
  if not _SWEEP.value:
    print("error: --sweep must name a sweep file, e.g. --sweep configs/sweeps/lr_synthetic.py",
          file=sys.stderr)
    return 2
  loaded = []  # (config, sweep); a bad file is one line naming it (config_files)
  status = exit_codes.run_reporting_errors(
      lambda: loaded.append(config_files.load_sweep_file(_SWEEP.value)))
  if status:
    return status
  (config, sweep), = loaded
  sweep_dir = _DIR.value or f"workdirs/sweeps/{pathlib.Path(_SWEEP.value).stem}"
  rows = []
  status = exit_codes.run_reporting_errors(lambda: rows.extend(
      sweeps.run_sweep(config, sweep, sweep_dir, vmap_seeds=_VMAP_SEEDS.value)))
  if status:
    return status
  best = sweeps.best_run(rows)
  print(f"{len(rows)} runs; summary: {sweep_dir}/summary.csv\nbest: {best}")
  return 0

