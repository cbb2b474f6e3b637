"""Train and evaluate one experiment: `python launch/train.py --config configs/default.py`.

Any field can be overridden, e.g. `--config.server_optimizer.learning_rate=0.05`
(the config is locked: a misspelled field is an error). Config and data mistakes print
one line naming the field and exit with status 2 (so do unreadable or mismatched
checkpoints); divergence exits with status 3; SIGINT/SIGTERM finish the current chunk of
steps, checkpoint and exit with status 130/143 (rerun with the same --workdir to resume).
"""

import pathlib
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from mtsl_jax import exit_codes, train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", "workdirs/default", "Directory for checkpoints and metrics; reruns resume.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  if _CONFIG.value is None:
    print("error: --config is required, e.g. --config configs/default.py", file=sys.stderr)
    return 2
  return exit_codes.run_reporting_errors(
      lambda: train.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main)
