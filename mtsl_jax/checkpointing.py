"""Checkpoints of the whole training state with orbax-checkpoint.

One `CheckpointManager` per workdir (`<workdir>/checkpoints/<step>/`). Each checkpoint
holds the full state pytree (every side's parameters and optimizer state, the RNG, the
step), the loop's metric window (sums since the last log, so a resumed run logs the
same averages) and the run's fingerprint (`fingerprint.py`: every config field that
changes the computation and a digest of the data). Orbax writes to a temporary directory
and renames it when complete, so an interrupted save never replaces a good checkpoint.

Refusals are errors with one-line messages: a checkpoint of another run (naming every
differing field with both values), a damaged checkpoint (never skipped silently: an older
one is not substituted behind the user's back), and a save that fails in orbax's
background threads (full disk, permissions), reported at the next save or wait with the
step, the directory and the cause. Saving a step that is already on disk is a no-op, so a
boundary that is both a checkpoint step and a signal's stopping point saves once.
Temporary directories left by a save that was killed are removed when the manager opens.
"""

import json
import pathlib
import re
import shutil
from typing import Any

import orbax.checkpoint as ocp

from mtsl_jax import errors
from mtsl_jax import fingerprint as fingerprints

PyTree = Any

# The errors are defined in `errors.py`; these names are this module's public API.
CheckpointError = errors.CheckpointError
CheckpointMismatchError = errors.CheckpointMismatchError
CheckpointCorruptError = errors.CheckpointCorruptError
CheckpointWriteError = errors.CheckpointWriteError


def _remove_unfinished_saves(directory: pathlib.Path) -> None:
  """Deletes the temporary directories of saves that never finished (a killed process).

  Orbax never reports them as checkpoints, but leaves them on disk. Its own
  `cleanup_tmp_directories` option runs in a background thread that can outlive a short
  process, so the cleanup is done here, synchronously, before the manager opens (one
  writer per workdir is assumed, as everywhere in this module).
  """
  if directory.is_dir():
    for path in directory.glob("*.orbax-checkpoint-tmp*"):
      shutil.rmtree(path, ignore_errors=True)


def _one_line(e: BaseException, limit: int = 300) -> str:
  return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


# What storage errors say when the cause is the disk or the permissions (strerror texts).
_STORAGE_CAUSES = ("File too large", "No space left on device", "Disk quota exceeded",
                   "Permission denied", "Read-only file system")


def _cause(e: BaseException, limit: int = 200) -> str:
  """The cause of a failed write in a few words, without orbax's and tensorstore's long
  prefixes: a storage cause named anywhere in the message ('File too large', ...), else
  the end of the message, where such errors usually state it."""
  text = " ".join(str(e).split())
  named = [c for c in _STORAGE_CAUSES if c in text]
  if named:
    return f"{type(e).__name__}: {'; '.join(named)}"
  return f"{type(e).__name__}: {'...' + text[-limit:] if len(text) > limit else text}"


class Checkpointer:
  """Saves and restores the training state of one workdir.

  Args:
    directory: where checkpoints live (created if missing).
    fingerprint: JSON-able description of what the state is for (`fingerprint.py`); a
      checkpoint whose fingerprint differs is never restored.
    max_to_keep: number of most recent checkpoints kept.

  Raises:
    CheckpointWriteError: the directory cannot be created or used.
  """

  def __init__(self, directory: str | pathlib.Path, fingerprint: dict, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    # Normalize through JSON so tuples and lists compare equal after a round trip.
    self.fingerprint = json.loads(json.dumps(fingerprint))
    self._failed = False
    self._pending: int | None = None  # the step of the last save started
    try:
      _remove_unfinished_saves(self.directory)
      self._manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True))
    except OSError as e:
      raise CheckpointWriteError(f"cannot use {self.directory} for checkpoints ({_one_line(e)}); "
                                 "choose another --workdir") from e

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def _fresh(self, step: int) -> str:
    return (f"delete {self.directory / str(step)} to resume from an earlier checkpoint "
            f"(steps here: {list(self._manager.all_steps())}), or use a new --workdir")

  def check_compatible(self, step: int | None = None) -> int | None:
    """Checks that a checkpoint (the latest by default) was written by this run's config.

    Args:
      step: which checkpoint; None for the latest.

    Returns:
      The checkpoint's step, or None when there is no checkpoint.

    Raises:
      CheckpointMismatchError: its fingerprint differs (every differing field named).
      CheckpointCorruptError: its fingerprint cannot be read.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      saved = meta["meta"]["fingerprint"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"the checkpoint at step {step} in {self.directory} cannot "
                                   f"be read ({type(e).__name__}); {self._fresh(step)}") from e
    differences = fingerprints.differences(saved, self.fingerprint)
    if differences:
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self.directory} was written by a different "
          f"run ({'; '.join(differences)}); use a new --workdir, or delete that "
          "checkpoints directory to start fresh")
    return step

  def restore(self, abstract_state: PyTree, step: int | None = None) -> PyTree:
    """Restores a checkpoint (the latest by default) into the structure of `abstract_state`.

    Args:
      abstract_state: the state's pytree of `jax.ShapeDtypeStruct` (from `jax.eval_shape`).
      step: which checkpoint; None for the latest.

    Returns:
      The restored state.

    Raises:
      CheckpointMismatchError: the checkpoint belongs to a different config.
      CheckpointCorruptError: it cannot be read.
    """
    step = self.check_compatible(step)
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    return self._restore_item(step, "state", abstract_state)

  def restore_window(self, abstract_window: PyTree, step: int | None = None) -> PyTree:
    """The metric window saved with a checkpoint (see `loop.Runner`).

    Args:
      abstract_window: the window's structure (`Runner.empty_window`).
      step: which checkpoint; None for the latest.

    Returns:
      The window as numpy arrays.
    """
    step = self.latest_step() if step is None else step
    return self._restore_item(step, "window", abstract_window)

  def _restore_item(self, step: int, name: str, abstract: PyTree) -> PyTree:
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(abstract)}))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"the checkpoint at step {step} in {self.directory} cannot "
                                   f"be read ({_one_line(e, 200)}); {self._fresh(step)}") from e
    return restored[name]

  def save(self, step: int, state: PyTree, window: PyTree) -> None:
    """Saves `state` and the metric window as checkpoint `step` (asynchronously; see `wait`).

    A step already on disk is not saved again (the state of a step is unique).

    Raises:
      CheckpointWriteError: this or an earlier background save failed.
    """
    if step in self._manager.all_steps():
      return
    # A background save that failed reports its error here, under its own step.
    self._guard(self._manager.check_for_errors, self._pending)
    self._guard(lambda: self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), window=ocp.args.StandardSave(window),
        meta=ocp.args.JsonSave({"fingerprint": self.fingerprint, "step": step})), force=True),
        step)
    self._pending = step

  def wait(self) -> None:
    """Blocks until pending saves are on disk.

    Raises:
      CheckpointWriteError: a background save failed.
    """
    self._guard(self._manager.wait_until_finished, self._pending)

  def _guard(self, fn, step: int | None) -> None:
    """Runs a save or wait; a failure (here or in a background thread) becomes one line."""
    try:
      fn()
    except Exception as e:  # pylint: disable=broad-except
      self._failed = True
      # Orbax reports an earlier background save's failure at the next call: the
      # temporary directory in its message names the step that failed.
      named = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))
      step = int(named.group(1)) if named else step
      kept = [s for s in self._manager.all_steps() if s != step]
      raise CheckpointWriteError(
          f"writing the checkpoint{f' of step {step}' if step is not None else ''} to "
          f"{self.directory} failed ({_cause(e)}); the complete checkpoints there are kept "
          f"(latest: {max(kept) if kept else 'none'}): fix the cause (disk space, "
          "permissions) and rerun to resume") from e

  def close(self) -> None:
    """Finishes pending saves and releases the manager.

    Raises:
      CheckpointWriteError: a pending save failed (not raised again once reported).
    """
    try:
      if not self._failed:
        self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # pylint: disable=broad-except
        if not self._failed:
          raise
