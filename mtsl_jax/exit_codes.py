"""How command-line entry points turn the library's errors into messages and exit codes.

  2    a config, data or checkpoint problem: one line naming the field or file, no traceback
  3    training diverged (non-finite loss or gradient); the last good checkpoint is kept
  128+N  stopped by signal N (SIGINT 130, SIGTERM 143) after writing a checkpoint
"""

import sys
from typing import Callable

from mtsl_jax import checkpointing, data, loop, train, validation


def run_reporting_errors(fn: Callable[[], object]) -> int:
  """Runs `fn`; returns 0, or prints the error to stderr and returns its exit code.

  Args:
    fn: the work of the command (training, a sweep, ...).

  Returns:
    The process exit status.
  """
  try:
    fn()
  except (validation.ConfigError, data.DataError, checkpointing.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except loop.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  except train.TrainingInterrupted as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum  # the shell's convention for "ended by signal N"
  return 0
