"""Checkpoints of the whole training state with orbax-checkpoint.

One `CheckpointManager` per workdir (`<workdir>/checkpoints/<step>/`). Each checkpoint
holds the full state pytree (every side's parameters and optimizer state, the RNG, the
step) and a JSON fingerprint of what the state was built for (algorithm, clients, model,
split, data shapes). Orbax writes to a temporary directory and renames it when complete,
so an interrupted save never replaces a good checkpoint. Restoring into a different
config is refused with an error naming the differing fields instead of failing deep in
orbax or, worse, silently training the wrong model; a damaged checkpoint is reported, never
skipped silently (an older one is not substituted behind the user's back). Temporary
directories left by a save that was killed are removed when the manager opens.
"""

import json
import pathlib
import shutil
from typing import Any

import orbax.checkpoint as ocp

PyTree = Any


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir cannot be used; the message says how to start fresh."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint in a workdir was written by a different experiment config."""


class CheckpointCorruptError(CheckpointError):
  """The latest checkpoint exists but cannot be read (truncated or damaged files)."""


def _diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      out += _diff(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: checkpoint has {a!r}, config has {b!r}")
  return out


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


class Checkpointer:
  """Saves and restores the training state of one workdir.

  Args:
    directory: where checkpoints live (created if missing).
    fingerprint: JSON-able description of what the state is for; a checkpoint whose
      fingerprint differs is never restored.
    max_to_keep: number of most recent checkpoints kept.
  """

  def __init__(self, directory: str | pathlib.Path, fingerprint: dict, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    # Normalize through JSON so tuples and lists compare equal after a round trip.
    self.fingerprint = json.loads(json.dumps(fingerprint))
    _remove_unfinished_saves(self.directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None."""
    return self._manager.latest_step()

  def restore(self, abstract_state: PyTree, step: int | None = None) -> PyTree:
    """Restores a checkpoint (the latest by default) into the structure of `abstract_state`.

    Args:
      abstract_state: the state's pytree of `jax.ShapeDtypeStruct` (from `jax.eval_shape`).
      step: which checkpoint; None for the latest.

    Returns:
      The restored state.

    Raises:
      CheckpointMismatchError: the checkpoint belongs to a different config.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    fresh = (f"delete {self.directory / str(step)} to resume from an earlier checkpoint "
             f"(steps here: {list(self._manager.all_steps())}), or use a new --workdir")
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      saved_fingerprint = meta["meta"]["fingerprint"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"the checkpoint at step {step} in {self.directory} cannot "
                                   f"be read ({type(e).__name__}); {fresh}") from e
    differences = _diff(saved_fingerprint, self.fingerprint)
    if differences:
      raise CheckpointMismatchError(
          f"the checkpoint at step {step} in {self.directory} was written by a different "
          f"config ({'; '.join(differences)}); use a new --workdir, or delete that "
          "checkpoints directory to start fresh")
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointCorruptError(f"the checkpoint at step {step} in {self.directory} cannot "
                                   f"be read ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                                   f"{fresh}") from e
    return restored["state"]

  def save(self, step: int, state: PyTree) -> None:
    """Saves `state` as checkpoint `step` (asynchronously; see `wait`)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"fingerprint": self.fingerprint, "step": step})), force=True)

  def wait(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

