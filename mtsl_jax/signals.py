"""How a run reacts to SIGINT and SIGTERM: never a traceback, never a lost checkpoint.

Three moments, one rule each:

* Before training starts (validation, data, compilation, restore: `Phase.STARTING`),
  the first signal stops the run at once with `TrainingInterrupted`: nothing has been
  trained, so there is nothing to save.
* While training (`Phase.TRAINING`), the first signal is only recorded; the loop finishes
  the current chunk of steps, writes a checkpoint and raises `TrainingInterrupted`.
* A second signal while the first is being honoured stops the run at once, also with
  `TrainingInterrupted` (`immediate=True`): the checkpoints already complete on disk are
  kept; a save still in progress is left as a temporary directory, which the next run
  removes.

The launchers turn `TrainingInterrupted` into exit status 128 + N (the shell's convention)
and a one-line message. In a launcher process (`install_early_exit` was called) the two
"at once" cases end the process right in the handler, after printing that line: raising
from a signal handler unwinds through whatever library code was running (an orbax save
and its threads, a compilation, a restore), and an exception there can leave a lock or a
thread waiting and hang the exit (seen once in CI as a timeout). Nothing is lost: the
metric files are flushed after every record, the workdir lock is the kernel's, and a
half-written checkpoint is a temporary directory the next run removes. Called from Python
(a notebook), they raise `TrainingInterrupted` as described, so the kernel survives.
Only the main thread can install signal handlers; elsewhere (a worker thread of a
notebook, say) `stop_requests` installs none and records nothing.
`install_early_exit` covers the launcher's own start-up (imports, flag parsing), before
any of this: a signal there exits with 128 + N and one line.
"""

import contextlib
import enum
import os
import signal
import sys
import threading
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(BaseException):
  """SIGINT/SIGTERM stopped the run; the message says what was kept.

  A BaseException, like KeyboardInterrupt, so that the `except Exception` clauses of
  libraries (and of this one, which turns storage errors into one-line messages) let an
  interruption raised inside them pass.

  Attributes:
    signum: the signal's number.
    immediate: True when the run stopped at once (before training, or a second signal)
      rather than after checkpointing its last chunk.
  """

  def __init__(self, message: str, signum: int, immediate: bool = False):
    super().__init__(message)
    self.signum = signum
    self.immediate = immediate


class Phase(enum.Enum):
  STARTING = "starting"
  TRAINING = "training"


class StopRequests:
  """The signal state of one run (see the module docstring).

  Attributes:
    signum: the first signal received while training, or None.
    phase: where the run is.
  """

  def __init__(self):
    self.signum: int | None = None
    self.phase = Phase.STARTING

  def handle(self, signum: int, _frame) -> None:
    """The signal handler."""
    name = signal.Signals(signum).name
    if self.phase is Phase.STARTING:
      _stop_at_once(f"stopped by {name} before training started; nothing was trained or "
                    "saved", signum)
    if self.signum is not None:
      _stop_at_once(f"stopped at once by a second signal ({name}); the complete checkpoints "
                    "on disk are kept: rerun to resume from the latest", signum)
    self.signum = signum

  def start_training(self) -> None:
    """From now on a first signal is recorded, not acted on at once."""
    self.phase = Phase.TRAINING


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequests]:
  """Installs the run's SIGINT/SIGTERM handlers (main thread only) for the block.

  Yields:
    The run's StopRequests.
  """
  requests = StopRequests()
  if threading.current_thread() is not threading.main_thread():
    yield requests
    return
  previous = {s: signal.signal(s, requests.handle) for s in SIGNALS}
  try:
    yield requests
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)


_IN_LAUNCHER = False  # set by `install_early_exit`: this process is a launcher's


def _stop_at_once(message: str, signum: int) -> None:
  """Ends a launcher's process now with 128 + N; raises TrainingInterrupted elsewhere."""
  if _IN_LAUNCHER:
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)  # pylint: disable=protected-access
  raise TrainingInterrupted(message, signum, immediate=True)


def install_early_exit() -> None:
  """Until a run installs its own handlers: a signal exits with 128 + N and one line.

  For launchers, called before their heavy imports. `os._exit` because nothing has been
  written yet and an interpreter shutdown could wait on threads that imports started.
  """
  global _IN_LAUNCHER
  _IN_LAUNCHER = True

  def handler(signum, _frame):
    print(f"stopped by {signal.Signals(signum).name} while starting; nothing was done",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)  # pylint: disable=protected-access
  for s in SIGNALS:
    signal.signal(s, handler)
