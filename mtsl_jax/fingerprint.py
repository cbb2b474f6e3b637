"""What a checkpoint was computed from, so that a resume can refuse anything else.

A run's fingerprint is every config field that changes the computation (seed, data,
model, split, optimizers, algorithm, ...) plus a digest of the data the clients actually
train and evaluate on. Every checkpoint stores it; a resume whose fingerprint differs in
any entry is refused, naming each differing field with both values. The fields that MAY
change on resume are listed explicitly in `RESUMABLE_FIELDS`: they change when and where
things are logged, evaluated, saved or placed, never the trained parameters.

`num_steps` is special: it sets the length of decaying learning-rate schedules, so it is
part of the fingerprint when either optimizer's schedule is not 'constant'; with constant
schedules it may change on resume (to continue a finished run, say), but never below the
step of the checkpoint being resumed (`check_num_steps`).
"""

import hashlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from mtsl_jax import methods

# Bumped when the fingerprint's form changes; older checkpoints are then refused with a
# message saying so rather than a list of every field as "absent".
VERSION = 2

# Fields that may differ between a checkpoint and the config resuming it, and why.
RESUMABLE_FIELDS = {
    "log_every": "when train metrics are logged",
    "eval_every": "when the model is evaluated",
    "checkpoint_every": "when checkpoints are written",
    "max_checkpoints_to_keep": "how many checkpoints are kept",
    "progress_bar": "display only",
    "disable_jit": "how the steps are executed (debugging), not what they compute",
    "eval_batch_size": "evaluation chunk size (evaluated losses may differ in the last bits)",
    "parallel.client_devices": "placement of the client axis on devices",
    "data.tfds_data_dir": "where the data are read from (the data digest guards their content)",
    "data.npz_path": "where the data are read from (the data digest guards their content)",
    "data.client_path": "where the data are read from (the data digest guards their content)",
}


def _earlier_aggregation_weights(config: ml_collections.ConfigDict) -> str:
  """The `fl.aggregation_weights` that computes what runs did before the field existed.

  The FedAvg family averaged with `split.task_weights` then; the other methods never
  read the field, so for them any value reproduces their earlier runs.
  """
  if config.algorithm in methods.ROUND_ALGORITHMS:
    return config.split.task_weights
  return config.fl.aggregation_weights


# Fields added after fingerprints were first written, with the value that reproduces the
# earlier behaviour (or a function of the config giving it): left out of the fingerprint
# at that value, so checkpoints from before the field existed still resume.
LATER_FIELDS = {
    "server_optimizer.learning_rate_in_state": False,
    "client_optimizer.learning_rate_in_state": False,
    "data.normalization": "auto",
    "fl.local_epochs": 0,
    "fl.aggregation_weights": _earlier_aggregation_weights,
    "data.max_eval_examples_per_client": 0,
    "split.freeze_server": False,
    "split.client_init": "independent",
    "split.client_lr_scaling": "none",
    "privacy.smashed_noise_std": 0.0,
    "privacy.nopeek_weight": 0.0,
    "privacy.cut_grad_clip": 0.0,
    "privacy.cut_grad_noise_std": 0.0,
}


def dotted(nested: dict) -> dict[str, Any]:
  """A nested dict as dotted paths -> leaf values ({'a': {'b': 1}} -> {'a.b': 1})."""
  out = {}

  def walk(d, prefix):
    for key, value in d.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")
      else:
        out[prefix + key] = value
  walk(nested, "")
  return out


def flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Dotted field -> JSON-normalized value (tuples become lists, as after a round trip)."""
  out = dotted(config.to_dict())
  normalize = lambda v: [normalize(x) for x in v] if isinstance(v, (list, tuple)) else v
  return {k: normalize(v) for k, v in out.items()}


def constant_schedules(config: ml_collections.ConfigDict) -> bool:
  """Whether neither optimizer's learning rate depends on `num_steps`."""
  return (config.server_optimizer.schedule == "constant"
          and config.client_optimizer.schedule == "constant")


def data_digest(arrays: Sequence[np.ndarray]) -> str:
  """A digest of the clients' arrays (content, dtype and shape of each, in order).

  Args:
    arrays: the arrays the run trains and evaluates on.

  Returns:
    A hex string; equal for equal data.
  """
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
  return h.hexdigest()


def federation_digest(federation) -> str:
  """`data_digest` of a `data.Federation`: every client's train and test arrays."""
  return data_digest([*federation.train_x, *federation.train_y, *federation.test_x,
                      *federation.test_y, np.asarray(federation.num_classes)])


def run_fingerprint(config: ml_collections.ConfigDict, digest: str, **extra) -> dict:
  """The fingerprint of a run.

  Args:
    config: the validated experiment config.
    digest: `federation_digest` of its data (or a combination for several seeds).
    **extra: further JSON-able entries that must match on resume (e.g. a seed list).

  Returns:
    A JSON-able dict: {'version', 'config': {dotted field: value}, 'data_digest', ...}.
  """
  fields = flatten(config)
  for name in RESUMABLE_FIELDS:
    fields.pop(name, None)
  for name, earlier in LATER_FIELDS.items():
    if fields.get(name) == (earlier(config) if callable(earlier) else earlier):
      fields.pop(name)
  if constant_schedules(config):
    fields.pop("num_steps")
  return {"version": VERSION, "config": fields, "data_digest": digest, **extra}


def differences(saved: dict, current: dict) -> list[str]:
  """Every entry where two fingerprints differ, as 'field: checkpoint has A, config has B'.

  Args:
    saved: the checkpoint's fingerprint.
    current: the resuming run's fingerprint.

  Returns:
    One string per differing entry (empty when they match).
  """
  if saved.get("version") != current.get("version"):
    records = (f"version {saved.get('version')}" if "version" in saved else "an older form")
    return [f"fingerprint version: the checkpoint was written by a version of mtsl_jax "
            f"that records {records}, this one version {current.get('version')}"]
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if key == "config":
      for field in sorted(set(a) | set(b)):
        # A later field is left out at its default: name that value, not its absence.
        absent = LATER_FIELDS.get(field, "<absent>")
        if callable(absent):  # the earlier value depends on the config: not one value
          absent = "<absent>"
        u, v = a.get(field, absent), b.get(field, absent)
        if u != v:
          out.append(f"{field}: checkpoint has {u!r}, config has {v!r}")
    elif key == "data_digest" and a != b and saved.get("config") == current.get("config"):
      out.append("the data: the clients' arrays differ from those the checkpoint was trained "
                 "on (same config fields, other content: changed files at data.npz_path, "
                 "data.client_path or data.tfds_data_dir, or another version of the data "
                 "pipeline)")
    elif a != b and key != "data_digest":
      out.append(f"{key}: checkpoint has {a!r}, config has {b!r}")
  return out


def check_num_steps(config: ml_collections.ConfigDict, restored_step: int) -> None:
  """Refuses a config whose num_steps lies below the step being resumed.

  Args:
    config: the resuming config.
    restored_step: the step of the checkpoint.

  Raises:
    ValueError: with a message giving both values (callers wrap it in their error type,
      naming the field).
  """
  if config.num_steps < restored_step:
    raise ValueError(f"must be >= {restored_step}, the step of the checkpoint being "
                     f"resumed; got {config.num_steps} (use a new --workdir to train a "
                     "shorter run)")


def of_run(config: ml_collections.ConfigDict, federation) -> dict:
  """`run_fingerprint` of a config and the federation built from it."""
  return run_fingerprint(config, federation_digest(federation))
