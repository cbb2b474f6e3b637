"""Sweep (server, client) learning rates as one vmapped program; CSV, heatmaps, theory.

  python launch/lr_sweep.py --config configs/default.py \
      --server_lrs=0.01,0.03,0.1,0.3,1,3 --client_lrs=0.003,0.01,0.03,0.1,0.3,1 \
      --out_dir docs/figures --name synthetic

Every (η_s, η_c) pair trains from the same initialization on the same minibatches
(`mtsl_jax.lr_grid`); the grid is chunked with --chunk_size when it does not fit. Writes
`<name>_lr_sweep.csv` and `<name>_lr_sweep.png` (final train loss and steps to the target
mean test accuracy, with the theory's descent boundary and predicted best ratio from the
block constants at initialization, docs/theory.md) and prints the best pairs.
"""

import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from mtsl_jax import exit_codes, lr_study, plotting

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py).", lock_config=True)
_SERVER_LRS = flags.DEFINE_list("server_lrs", "0.01,0.03,0.1,0.3,1,3", "Server rates.")
_CLIENT_LRS = flags.DEFINE_list("client_lrs", "0.003,0.01,0.03,0.1,0.3,1", "Client rates.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Steps between test evaluations.")
_TARGET = flags.DEFINE_float("target_accuracy", 0.8, "Target mean per-task test accuracy.")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Grid points per program; 0: all at once.")
_OUT = flags.DEFINE_string("out_dir", "docs/figures", "Where the CSV and PNG go.")
_NAME = flags.DEFINE_string("name", "sweep", "File name prefix.")
_SMOOTH_BATCH = flags.DEFINE_integer("smoothness_batch", 256,
                                     "Examples per client for the block constants.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  studies = []
  status = exit_codes.run_reporting_errors(lambda: studies.append(lr_study.run_study(
      config, _SERVER_LRS.value, _CLIENT_LRS.value, eval_every=_EVAL_EVERY.value,
      target=_TARGET.value, chunk_size=_CHUNK.value, smoothness_batch=_SMOOTH_BATCH.value)))
  if status:
    return status
  study = studies[0]
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  lr_study.write_csv(study, out / f"{_NAME.value}_lr_sweep.csv")
  plotting.plot_lr_study(study, out / f"{_NAME.value}_lr_sweep.png")
  print(lr_study.summary(study, config.num_steps))
  print(f"wrote {out}/{_NAME.value}_lr_sweep.csv and .png")
  return 0


if __name__ == "__main__":
  app.run(main)
