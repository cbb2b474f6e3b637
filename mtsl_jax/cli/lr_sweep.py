"""Sweep (server, client) learning rates as one vmapped program; CSV, heatmaps, theory.

  python launch/lr_sweep.py --config configs/default.py \
      --server_lrs=0.01,0.03,0.1,0.3,1,3 --client_lrs=0.003,0.01,0.03,0.1,0.3,1 \
      --out_dir docs/figures --name synthetic

Every (η_s, η_c) pair trains from the same initialization on the same minibatches
(`mtsl_jax.lr_grid`); the grid is chunked with --chunk_size when it does not fit. Each
point keeps its metrics.jsonl under --workdir, and an interrupted sweep resumes. Writes
`<name>_lr_sweep.csv` and `<name>_lr_sweep.png` (final train loss and steps to the target
mean test accuracy, with the theory's descent boundary and predicted best ratio from the
block constants at initialization, docs/theory.md) and prints the best pairs.

Installed as `mtsl-lr-sweep` (`mtsl_jax.cli.commands`); `python launch/lr_sweep.py` runs it from
a clone.
"""

import pathlib
import sys

from absl import flags

from mtsl_jax import config_files, exit_codes, lr_study, plotting

_CONFIG = config_files.DEFINE_config_file("config", "Experiment config file (configs/<name>.py).")
_SERVER_LRS = flags.DEFINE_list("server_lrs", "0.01,0.03,0.1,0.3,1,3", "Server rates.")
_CLIENT_LRS = flags.DEFINE_list("client_lrs", "0.003,0.01,0.03,0.1,0.3,1", "Client rates.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Steps between test evaluations.",
                                    lower_bound=1)
_TARGET = flags.DEFINE_float("target_accuracy", 0.8, "Target mean per-task test accuracy.")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Grid points per program; 0: all at once.",
                              lower_bound=0)
_OUT = flags.DEFINE_string("out_dir", "docs/figures", "Where the CSV and PNG go.")
_NAME = flags.DEFINE_string("name", "sweep", "File name prefix.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where each grid point's metrics.jsonl and the group checkpoints go; "
    "rerunning on it resumes. Default: workdirs/lr_sweep/<name>.")
_SMOOTH_BATCH = flags.DEFINE_integer("smoothness_batch", 256,
                                     "Examples per client for the block constants.",
                                     lower_bound=1)


def main() -> int:
  """Trains the learning-rate grid, writes the CSV and heatmaps; the exit status."""
  config = config_files.required_config(_CONFIG)
  if config is None:
    return 2
  try:
    server_lrs = config_files.finite_positive_floats(_SERVER_LRS.value, "server_lrs")
    client_lrs = config_files.finite_positive_floats(_CLIENT_LRS.value, "client_lrs")
  except config_files.CommandLineError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  studies = []
  status = exit_codes.run_reporting_errors(lambda: studies.append(lr_study.run_study(
      config, server_lrs, client_lrs, eval_every=_EVAL_EVERY.value,
      target=_TARGET.value, chunk_size=_CHUNK.value, smoothness_batch=_SMOOTH_BATCH.value,
      workdir=_WORKDIR.value or pathlib.Path("workdirs") / "lr_sweep" / _NAME.value)))
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

