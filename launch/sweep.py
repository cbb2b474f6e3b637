"""Run a sweep: `python launch/sweep.py --sweep configs/sweeps/lr_synthetic.py --dir DIR`.

The sweep file defines `get_config()` (the base experiment) and `get_sweep()` (field ->
list of values; 'seed' included). Rerunning the same command skips finished runs and
resumes interrupted ones. DIR/summary.csv holds one row per run. `--vmap_seeds` trains
the seeds of otherwise equal combinations as one vmapped program (see mtsl_jax/seed_batch.py;
seeds that cannot share a program run one after another); results match, to float rounding.
"""

import importlib.util
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from mtsl_jax import exit_codes, sweeps

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file with get_config() and get_sweep().")
_DIR = flags.DEFINE_string("dir", None, "Sweep directory (default workdirs/sweeps/<name>).")
_VMAP_SEEDS = flags.DEFINE_bool("vmap_seeds", False,
                                "Train the seeds of each combination as one vmapped program.")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not _SWEEP.value or not pathlib.Path(_SWEEP.value).is_file():
    print(f"error: --sweep must name a sweep file, got {_SWEEP.value!r}", file=sys.stderr)
    return 2
  spec = importlib.util.spec_from_file_location("sweep_file", _SWEEP.value)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweep_dir = _DIR.value or f"workdirs/sweeps/{pathlib.Path(_SWEEP.value).stem}"
  rows = []
  status = exit_codes.run_reporting_errors(lambda: rows.extend(
      sweeps.run_sweep(module.get_config(), module.get_sweep(), sweep_dir,
                       vmap_seeds=_VMAP_SEEDS.value)))
  if status:
    return status
  best = sweeps.best_run(rows)
  print(f"{len(rows)} runs; summary: {sweep_dir}/summary.csv\nbest: {best}")
  return 0


if __name__ == "__main__":
  app.run(main)
