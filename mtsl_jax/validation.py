"""Config validation: every field checked before any data is loaded or anything compiles.

A mistake gets a `ConfigError` whose one-line message names the field and what is allowed,
e.g. `config.split.client_top_blocks: must be 0 with orientation 'bottom' (the server holds
the head); got 1`. `launch/train.py` prints it and exits with status 2, no traceback.
Checks that need the data (more clients than examples, ...) raise `data.DataError` while
the federation is built, which is still before compilation.
"""

import math
from typing import Any, Callable

import ml_collections

from mtsl_jax import algorithms, client_groups, config_base, models, optimizers, split

ALGORITHMS = tuple(algorithms.ALGORITHMS)
SPLIT_ALGORITHMS = ("mtsl", "splitfed_v1", "splitfed_v2")  # the ones config.split cuts
DATA_SOURCES = ("synthetic", "tfds", "npz")
TFDS_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100")
PARTITIONS = ("iid", "dirichlet", "shards")
NOISE_PROFILES = ("constant", "linear")
TASK_WEIGHTS = ("uniform", "data_size")
IMPLEMENTATIONS = ("fused", "protocol")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and what is allowed."""

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _check_schema(config, base, prefix: str = "") -> None:
  """Unknown fields and wrong types, against `config_base.base_config()`."""
  for key in config.keys():
    if key not in base:
      raise ConfigError(prefix + key, f"unknown field; known fields here: {sorted(base.keys())}")
  for key, default in base.items():
    field = prefix + key
    if key not in config:
      raise ConfigError(field, "missing; start configs from config_base.base_config()")
    value = config[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(field, f"must be a section (ConfigDict), got {value!r}")
      _check_schema(value, default, field + ".")
    elif isinstance(default, bool):
      if not isinstance(value, bool):
        raise ConfigError(field, f"must be true or false, got {value!r}")
    elif isinstance(default, float):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    elif isinstance(default, int):
      if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    elif isinstance(default, str):
      if not isinstance(value, str):
        raise ConfigError(field, f"must be a string, got {value!r}")
    elif isinstance(default, tuple):
      if not isinstance(value, (tuple, list)):
        raise ConfigError(field, f"must be a tuple, got {value!r}")


def _rules(c) -> list[tuple[str, Callable[[Any], bool], str]]:
  """(field, predicate, what is allowed) for every single-field rule."""
  is_pos = lambda v: v > 0
  positive_ints = lambda v: len(v) > 0 and all(isinstance(i, int) and i > 0 for i in v)
  one_of = lambda choices: (lambda v: v in choices, f"one of {choices}")
  rules = [
      ("seed", lambda v: v >= 0, "an integer >= 0"),
      ("algorithm", *one_of(ALGORITHMS)),
      ("data.source", *one_of(DATA_SOURCES)),
      ("data.num_clients", lambda v: v >= 1, "an integer >= 1"),
      ("data.partition", *one_of(PARTITIONS)),
      ("data.dirichlet_alpha", is_pos, "a number > 0"),
      ("data.classes_per_client", lambda v: v >= 1, "an integer >= 1"),
      ("data.min_examples_per_client", lambda v: v >= 1, "an integer >= 1"),
      ("data.max_examples_per_client", lambda v: v >= 0, "an integer >= 0 (0: no cap)"),
      ("data.validation_fraction", lambda v: 0 <= v < 1, "a number in [0, 1)"),
      ("data.evaluate_on", lambda v: v == "test" or (
          v == "validation" and c.data.validation_fraction > 0),
       "'test', or 'validation' with data.validation_fraction > 0"),
      ("data.feature_noise_std", lambda v: v >= 0, "a number >= 0"),
      ("data.label_noise_rate", lambda v: 0 <= v < 1, "a number in [0, 1)"),
      ("data.noise_profile", *one_of(NOISE_PROFILES)),
      ("data.synthetic.alpha", lambda v: v >= 0, "a variance >= 0"),
      ("data.synthetic.beta", lambda v: v >= 0, "a variance >= 0"),
      ("data.synthetic.num_features", lambda v: v >= 1, "an integer >= 1"),
      ("data.synthetic.num_classes", lambda v: v >= 2, "an integer >= 2"),
      ("data.synthetic.min_classes", lambda v: v == 0 or 2 <= v <= c.data.synthetic.num_classes,
       "0, or an integer in [2, data.synthetic.num_classes]"),
      ("data.synthetic.examples_lognormal_sigma", lambda v: v >= 0, "a number >= 0"),
      ("data.synthetic.max_examples", lambda v: v >= 2, "an integer >= 2"),
      ("data.synthetic.test_fraction", lambda v: 0 < v < 1, "a number in (0, 1)"),
      ("model.name", *one_of(models.MODEL_NAMES)),
      ("model.hidden_sizes", positive_ints, "a non-empty tuple of positive integers"),
      ("model.cnn_features", positive_ints, "a non-empty tuple of positive integers"),
      ("model.cnn_dense", is_pos, "an integer > 0"),
      ("model.resnet_widths", positive_ints, "a non-empty tuple of positive integers"),
      ("model.resnet_blocks_per_stage", is_pos, "an integer > 0"),
      ("model.dtype", *one_of(DTYPES)),
      ("model.conv_impl", *one_of(models.CONV_IMPLS)),
      ("split.orientation", *one_of(split.ORIENTATIONS)),
      ("split.client_bottom_blocks", lambda v: v >= 0, "an integer >= 0"),
      ("split.client_top_blocks", lambda v: v >= 0, "an integer >= 0"),
      ("split.task_weights", *one_of(TASK_WEIGHTS)),
      ("split.implementation", *one_of(IMPLEMENTATIONS)),
      ("split.client_lr_multipliers",
       lambda v: len(v) in (0, c.data.num_clients) and all(
           isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in v),
       "() or one positive number per client (data.num_clients of them)"),
      ("batch_size", is_pos, "an integer > 0"),
      ("num_steps", is_pos, "an integer > 0"),
      ("log_every", is_pos, "an integer > 0"),
      ("eval_every", is_pos, "an integer > 0"),
      ("checkpoint_every", is_pos, "an integer > 0"),
      ("eval_batch_size", is_pos, "an integer > 0"),
      ("max_checkpoints_to_keep", is_pos, "an integer > 0"),
      ("parallel.client_devices", lambda v: v >= 0, "an integer >= 0 (0: all devices)"),
  ]
  for side in ("server_optimizer", "client_optimizer"):
    rules += [
        (f"{side}.name", *one_of(optimizers.OPTIMIZER_NAMES)),
        (f"{side}.learning_rate", is_pos, "a number > 0"),
        (f"{side}.schedule", *one_of(optimizers.SCHEDULE_NAMES)),
        (f"{side}.warmup_steps", lambda v: 0 <= v < c.num_steps, "an integer in [0, num_steps)"),
        (f"{side}.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
        (f"{side}.weight_decay", lambda v: v >= 0, "a number >= 0"),
        (f"{side}.grad_clip_norm", lambda v: v >= 0, "a number >= 0 (0: no clipping)"),
    ]
  return rules


def _check_data_names(c) -> None:
  if c.data.source == "tfds":
    names = c.data.name.split(",")
    for name in names:
      if name not in TFDS_DATASETS:
        raise ConfigError("data.name", f"each name must be one of {TFDS_DATASETS} (join several "
                          f"with ',' to mix datasets), got {c.data.name!r}")
    if len(names) > c.data.num_clients:
      raise ConfigError("data.num_clients", f"a mixture of {len(names)} datasets needs at least "
                        f"that many clients, got {c.data.num_clients}")
  if c.data.source == "npz" and not c.data.npz_path:
    raise ConfigError("data.npz_path", "must name a .npz file when data.source is 'npz'")
  if c.data.source == "synthetic" and c.data.rotation_step_degrees != 0:
    raise ConfigError("data.rotation_step_degrees", "must be 0 for synthetic (non-image) data")
  if c.data.source == "synthetic" and c.model.name != "mlp":
    raise ConfigError("model.name", f"must be 'mlp' for synthetic (vector) data, got "
                      f"{c.model.name!r}; cnn and resnet need image data")


def _check_split(c) -> None:
  b, t, orient = c.split.client_bottom_blocks, c.split.client_top_blocks, c.split.orientation
  n = models.num_blocks(c.model)
  if orient == "bottom" and (b < 1 or t != 0):
    field = "client_bottom_blocks" if b < 1 else "client_top_blocks"
    raise ConfigError(f"split.{field}", "orientation 'bottom' needs client_bottom_blocks >= 1 "
                      f"and client_top_blocks == 0 (the server holds the head); got {b} and {t}")
  if orient == "top" and (b != 0 or t < 1):
    field = "client_bottom_blocks" if b != 0 else "client_top_blocks"
    raise ConfigError(f"split.{field}", "orientation 'top' needs client_bottom_blocks == 0 "
                      f"(the server holds the input side) and client_top_blocks >= 1; got {b} "
                      f"and {t}")
  if orient == "u_shaped" and (b < 1 or t < 1):
    field = "client_bottom_blocks" if b < 1 else "client_top_blocks"
    raise ConfigError(f"split.{field}", "orientation 'u_shaped' needs client_bottom_blocks >= 1 "
                      f"and client_top_blocks >= 1; got {b} and {t}")
  if b + t > n - 1:
    raise ConfigError("split.client_bottom_blocks", f"the {c.model.name} has {n} blocks, so "
                      f"client_bottom_blocks + client_top_blocks must be <= {n - 1} (the server "
                      f"keeps at least one); got {b} + {t}")
  if orient == "bottom" and c.data.source == "synthetic" and c.data.synthetic.min_classes > 0:
    raise ConfigError("data.synthetic.min_classes", "per-task label spaces need the head on the "
                      "clients (orientation 'top' or 'u_shaped'); with 'bottom' use 0")


def _check_client_groups(c) -> None:
  """`model.client_width_groups`: well formed, covering the clients, with a width to vary."""
  groups, field = c.model.client_width_groups, "model.client_width_groups"
  if not groups:
    return
  is_count = lambda n: isinstance(n, int) and not isinstance(n, bool) and n >= 1
  is_ratio = lambda r: isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf
  if not all(isinstance(g, (tuple, list)) and len(g) == 2 and is_count(g[0]) and is_ratio(g[1])
             for g in groups):
    raise ConfigError(field, "must be () or a tuple of (num_clients, width_multiplier) pairs, "
                      f"num_clients an integer >= 1, width_multiplier a number > 0; got {groups!r}")
  if c.algorithm != "mtsl":
    raise ConfigError(field, f"must be () with algorithm {c.algorithm!r}: only 'mtsl' trains "
                      "clients of different widths (the baselines average or share client "
                      "models, which needs one architecture)")
  if c.model.name not in ("mlp", "cnn"):
    raise ConfigError(field, f"must be () with model.name {c.model.name!r}; client widths can "
                      "vary in the 'mlp' and the 'cnn'")
  if sum(n for n, _ in groups) != c.data.num_clients:
    raise ConfigError(field, f"the group sizes must sum to data.num_clients "
                      f"({c.data.num_clients}); got {groups!r}")
  b, t = c.split.client_bottom_blocks, c.split.client_top_blocks
  if not client_groups.free_client_blocks(models.num_blocks(c.model), b, t):
    raise ConfigError(field, f"the clients hold no block of free width with client_bottom_blocks "
                      f"{b} and client_top_blocks {t} (the bottom's last block outputs the cut, "
                      "the top's last is the head): give the clients >= 2 bottom or top blocks")
  if c.parallel.client_devices != 1:
    raise ConfigError(field, "must be () when clients are sharded over devices "
                      f"(parallel.client_devices = {c.parallel.client_devices}); use 1 device")


def require_one_client_architecture(c, tool: str) -> None:
  """Raises ConfigError if `c` has client groups, for tools built on one stacked group.

  Args:
    c: a validated config.
    tool: what cannot handle groups, for the message.
  """
  if c.model.client_width_groups:
    raise ConfigError("model.client_width_groups", f"must be () for {tool}, which assumes "
                      "every client has the same architecture")


def _check_fl(c) -> None:
  """The federated baselines' section: ranges, and FedRep's head against the model."""
  rules = [
      ("fl.local_steps", lambda v: v >= 1, "an integer >= 1"),
      ("fl.client_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]"),
      ("fl.fedrep_head_blocks", lambda v: v >= 0, "an integer >= 0"),
      ("fl.fedrep_head_steps", lambda v: v >= 0, "an integer >= 0"),
      ("fl.num_components", lambda v: v >= 1, "an integer >= 1"),
  ]
  for field, predicate, allowed in rules:
    value = _get(c, field)
    if not predicate(value):
      raise ConfigError(field, f"must be {allowed}; got {value!r}")
  n = models.num_blocks(c.model)
  if c.algorithm == "fedrep" and c.fl.fedrep_head_blocks >= n:
    raise ConfigError("fl.fedrep_head_blocks", f"the {c.model.name} has {n} blocks and the "
                      f"shared body needs at least one, so it must be <= {n - 1}; got "
                      f"{c.fl.fedrep_head_blocks}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field of `config`; raises ConfigError on the first problem.

  Args:
    config: an experiment config built from `config_base.base_config()`.

  Raises:
    ConfigError: naming the field and what is allowed.
  """
  _check_schema(config, config_base.base_config())
  for field, predicate, allowed in _rules(config):
    value = _get(config, field)
    if not predicate(value):
      raise ConfigError(field, f"must be {allowed}; got {value!r}")
  _check_data_names(config)
  if config.algorithm in SPLIT_ALGORITHMS:  # the cut means nothing to unsplit methods
    _check_split(config)
  _check_client_groups(config)
  _check_fl(config)


def validate_label_spaces(config: ml_collections.ConfigDict, num_classes_M) -> None:
  """Data-dependent check: differing label spaces need a client-held head.

  Args:
    config: the validated config.
    num_classes_M: label-space size of each task, from the built federation.
  """
  if (config.algorithm in SPLIT_ALGORITHMS and config.split.orientation == "bottom"
      and len(set(int(k) for k in num_classes_M)) > 1):
    raise ConfigError("split.orientation", "the tasks have label spaces of different sizes "
                      f"({sorted(set(int(k) for k in num_classes_M))}); they need the head on the "
                      "clients: orientation 'top' or 'u_shaped'")
