"""How command-line entry points turn the library's errors into messages and exit codes.

  2    a config, data, workdir, metrics-file or checkpoint problem (including a checkpoint
       that could not be written): one line naming the field or file, no traceback
  3    training diverged (non-finite loss, gradient or parameter); the last good
       checkpoint is kept
  128+N  stopped by signal N (SIGINT 130, SIGTERM 143); see `signals.py` for what was kept

A command that fails ends its process with `os._exit` after flushing its output
(`exit_process`): a save that failed in orbax's background threads can leave threads
waiting forever for a signal, and an ordinary interpreter exit would wait for them.
"""

import logging
import os
import sys
from typing import Callable

from mtsl_jax import errors, signals

EXPECTED_ERRORS = (errors.ConfigError, errors.DataError, errors.CheckpointError,
                   errors.WorkdirError, errors.MetricsFileError)


def run_reporting_errors(fn: Callable[[], object]) -> int:
  """Runs `fn`; returns 0, or prints the error to stderr and returns its exit code.

  Args:
    fn: the work of the command (training, a sweep, ...).

  Returns:
    The process exit status.
  """
  try:
    fn()
  except EXPECTED_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except errors.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    return 3
  except signals.TrainingInterrupted as e:
    print(str(e), file=sys.stderr)
    return 128 + e.signum  # the shell's convention for "ended by signal N"
  return 0


def exit_process(code: int) -> None:
  """Ends the process with `code`: normally on success, with `os._exit` on failure.

  Args:
    code: the exit status.
  """
  if code == 0:
    sys.exit(0)
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # pylint: disable=protected-access


class _DropOrbaxErrorReports(logging.Filter):
  """Keeps orbax's own multi-line error reports of failed background saves off stderr.

  The failure reaches the user as one line from `checkpointing.CheckpointWriteError`
  (with the cause); orbax's logged tracebacks would bury it.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "/orbax/" in record.pathname)


def _is_closed_loop_report(exc_type, exc_value) -> bool:
  return exc_type is RuntimeError and str(exc_value) == "Event loop is closed"


def quiet_library_logs() -> None:
  """Launcher set-up: warnings and above, without orbax's error tracebacks.

  After a background save fails, tensorstore's callbacks can still fire into the event
  loop orbax has closed; each prints 'RuntimeError: Event loop is closed' with a
  traceback through `sys.unraisablehook`. Those reports (harmless: the failure itself is
  reported in one line) are dropped; every other exception is printed as usual.
  """
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
  absl_logging.get_absl_handler().addFilter(_DropOrbaxErrorReports())
  previous = sys.unraisablehook

  def unraisablehook(report):
    if not _is_closed_loop_report(report.exc_type, report.exc_value):
      previous(report)
  sys.unraisablehook = unraisablehook
