"""Config validation: every field checked before any data is loaded or anything compiles.

A mistake gets a `ConfigError` whose one-line message names the field and what is allowed,
e.g. `config.split.client_top_blocks: must be 0 with orientation 'bottom' (the server holds
the head); got 1`. The launchers print it and exit with status 2, no traceback
(`mtsl_jax/exit_codes.py`; config files and command-line overrides are read by
`mtsl_jax/config_files.py`). Checks that need the data (more clients than examples, ...)
raise `data.DataError` while the federation is built, which is still before compilation.

What is checked, in order:
  * the schema (`check_schema`): no unknown or missing field, every value of its field's
    Python type (numpy scalars refused: see `numpy_scalar_problem`), tuple elements too;
  * every single-field rule (`_rules`): choices, ranges, and an upper bound on every size,
    count and interval, each with the reason it is where it is (see "Upper bounds");
  * the rules that tie fields together (data names and shapes, the split, client groups,
    the federated baselines' section);
  * a lower bound on the memory the run needs (`memory.py`) against the machine's.
"""

import difflib
import math
from typing import Any, Callable

import ml_collections
import numpy as np

from mtsl_jax import client_groups, config_base, errors, memory, methods, models, optimizers
from mtsl_jax import split_model
from mtsl_jax.data import client_splits
from mtsl_jax.data import normalization
from mtsl_jax.data import sources

ALGORITHMS = methods.ALGORITHM_NAMES
SPLIT_ALGORITHMS = methods.SPLIT_ALGORITHMS  # the ones config.split cuts
DATA_SOURCES = ("synthetic", "tfds", "npz") + client_splits.SOURCES
TFDS_DATASETS = tuple(sources.TFDS_FEATURES)
PARTITIONS = ("iid", "dirichlet", "shards")
NOISE_PROFILES = ("constant", "linear")
TASK_WEIGHTS = ("uniform", "data_size")
CLIENT_LR_SCALINGS = ("none", "data_size")
PRIVACY_FIELDS = ("smashed_noise_std", "nopeek_weight", "cut_grad_clip", "cut_grad_noise_std")
AGGREGATION_WEIGHTS = ("data_size", "uniform")
IMPLEMENTATIONS = ("fused", "protocol")
CLIENT_INITS = ("independent", "common")
DTYPES = ("float32", "bfloat16")

# ---- Upper bounds -------------------------------------------------------------------------
# Generous for research, small enough that a slip (an extra zero or three, a seed pasted
# from elsewhere) fails here, in one line, instead of overflowing, exhausting the memory
# or hanging hours into a run. Sizes are further held to the memory estimate below.
INT32_MAX = 2**31 - 1
# jax.random.PRNGKey keeps only the low 32 bits of a seed while 64-bit mode is off
# (PRNGKey(2**32) equals PRNGKey(0), and from 2**63 it raises OverflowError), so a larger
# seed would silently repeat another seed's parameters and minibatches. numpy's
# SeedSequence (data/partition.py's derive_rng) takes any int >= 0, so JAX sets the range.
MAX_SEED = 2**32 - 1
# The step counter of every state, the number of steps handed to the compiled loop and
# the PRNG fold-in indices are int32. An interval longer than num_steps is allowed: the
# loop logs, evaluates and checkpoints at the end anyway.
MAX_STEPS = INT32_MAX
# The clients are one vmapped axis held by one process (or sharded over devices); the
# largest run measured is M = 10,000 (benchmarks/RESULTS.md), and building the data loops
# over the clients in Python.
MAX_CLIENTS = 100_000
# Per client per step (and per evaluation chunk). [M, B, ...] minibatches are drawn every
# step; at B = 65,536 every client of every dataset here is already trained full-batch.
MAX_BATCH = 65_536
# A 65,536 x 65,536 dense layer alone is 16 GiB of float32 parameters.
MAX_UNITS = 65_536
# A 3x3 convolution from 4,096 to 4,096 channels is 576 MiB of float32 parameters.
MAX_CHANNELS = 4_096
# Every block is its own Flax module, unrolled in the compiled step: compilation time
# grows with the depth. The CNN halves the image per block, so 16 outlast any image side.
MAX_DENSE_BLOCKS = 64
MAX_CONV_BLOCKS = 16
MAX_BLOCKS_PER_STAGE = 64
# Synthetic data: a flattened 224 x 224 x 3 image has 150,528 features.
MAX_FEATURES = 1_000_000
MAX_CLASSES = 100_000
MAX_EXAMPLES = 10_000_000
# Client sizes are int(exp(N(mean, sigma^2))) + 50 cast to int64 (data/synthetic.py), so
# exp(mean + 8 sigma) must stay below 2**63 = e^43.67: a larger draw becomes a negative
# size. Among even MAX_CLIENTS clients a draw beyond 8 sigma has probability < 1e-10.
# FedProx's Synthetic uses mean 4, sigma 2 (the default); this allows sigma up to 4.8.
MAX_LOGNORMAL_TAIL = 43.0
LOGNORMAL_SIGMAS = 8
# FedAvg-style rounds draw all K local minibatches of every client at once ([M, K, B, ...]),
# so K multiplies the batch memory; papers use K up to a few hundred.
MAX_LOCAL_STEPS = 100_000
# A round of E local epochs holds an index plan of E passes over each client's padded
# train set ([M, K, B] int32, K*B about E*N); peer libraries use 1 to 20 epochs.
MAX_LOCAL_EPOCHS = 1_000
# FedEM trains every component on every client (M x C models, vmapped); its paper uses 3.
MAX_COMPONENTS = 256
# Beyond ~1e3 the Dirichlet shares are already uniform to within 1%; near 1e307 numpy's
# draw overflows and returns all-zero shares (every example to one client).
MAX_DIRICHLET_ALPHA = 1e6
# Variances and noise levels of float32 inputs: the inputs are standardized (or drawn)
# with unit scale, so 1e6 is already pure noise; near 1e38 float32 overflows to inf.
MAX_SCALE = 1e6


ConfigError = errors.ConfigError  # defined in `errors.py`; public here too


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def unknown_field_message(name: str, known) -> str:
  """'unknown field', the closest known name (difflib) and the known names.

  Args:
    name: the misspelled last part of the field's path.
    known: the names that exist at that level.

  Returns:
    The message, without the `config.<field>: ` prefix.
  """
  known = sorted(known)
  close = difflib.get_close_matches(name, known, n=1)
  hint = f"did you mean {close[0]!r}? " if close else ""
  return f"unknown field; {hint}known fields here: {known}"


def expected_kind(field: str) -> str:
  """What a field of `config_base.base_config()` accepts, in words ('an integer', ...).

  Args:
    field: a dotted field path.

  Returns:
    The description; 'a known field' if the path is not in the schema.
  """
  try:
    default = _get(config_base.base_config(), field)
  except (KeyError, AttributeError):
    return "a known field"
  if isinstance(default, ml_collections.ConfigDict):
    return f"a section (set its fields one at a time, e.g. config.{field}.{next(iter(default))})"
  if isinstance(default, bool):
    return "true or false"
  if isinstance(default, int):
    return "an integer"
  if isinstance(default, float):
    return "a finite number"
  if isinstance(default, str):
    return "a string"
  return "a tuple, e.g. '(1, 2)'"


def numpy_scalar_problem(value, python_type: str) -> str | None:
  """Why a numpy scalar is refused where a Python scalar is expected; None if it is not one.

  Config files can compute values with numpy. ConfigDict refuses np.int64 for an int field
  but not inside a tuple or in a section built from a dict, and the run's records are JSON:
  the checkpoint fingerprint and config.json would fail on or misstate an np.int64 or
  np.bool_, and np.float32(0.1) is not 0.1. np.float64 is a Python float and stays allowed.

  Args:
    value: a config value.
    python_type: 'int', 'float' or 'bool': what the field takes, for the message.

  Returns:
    The message (without `config.<field>: `), or None.
  """
  if isinstance(value, np.generic) and not isinstance(value, (float, str)):
    kind = f"numpy.{type(value).__name__}"
    return (f"got {value!r}, a {kind}; use a Python {python_type} "
            f"({python_type}(value) converts it)")
  return None


def _python_type_of(value) -> str:
  if isinstance(value, (bool, np.bool_)):
    return "bool"
  if isinstance(value, (int, np.integer)):
    return "int"
  return "float"


# Tuple fields whose elements have one type: (element type, what it is in words).
_TUPLE_ELEMENTS = {
    "model.hidden_sizes": (int, "an integer"),
    "model.cnn_features": (int, "an integer"),
    "model.resnet_widths": (int, "an integer"),
    "split.client_lr_multipliers": (float, "a number"),
}


def _check_tuple(field: str, value) -> None:
  """Tuples: every element (at any depth) a Python scalar, of the field's element type."""
  def walk(v, where):
    if isinstance(v, (tuple, list)):
      for i, item in enumerate(v):
        walk(item, f"{where}[{i}]")
      return
    problem = numpy_scalar_problem(v, _python_type_of(v))
    if problem:
      raise ConfigError(field, f"element {where}: {problem}")
  walk(value, "")
  if field in _TUPLE_ELEMENTS:
    kind, words = _TUPLE_ELEMENTS[field]
    for i, item in enumerate(value):
      ok = (isinstance(item, (int, float)) if kind is float else isinstance(item, int))
      if isinstance(item, bool) or not ok:
        raise ConfigError(field, f"element [{i}] must be {words}, got {item!r} "
                          f"({type(item).__name__}) in {tuple(value)!r}")


def _check_schema(config, base, prefix: str = "") -> None:
  """Unknown fields and wrong types, against `config_base.base_config()`."""
  for key in config.keys():
    if key not in base:
      raise ConfigError(prefix + key, unknown_field_message(key, base.keys()))
  for key, default in base.items():
    field = prefix + key
    if key not in config:
      raise ConfigError(field, "missing; start configs from config_base.base_config()")
    value = config[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(field, f"must be a section (ConfigDict), got {value!r}")
      _check_schema(value, default, field + ".")
      continue
    expected = ("bool" if isinstance(default, bool) else "int" if isinstance(default, int)
                else "float" if isinstance(default, float) else None)
    problem = numpy_scalar_problem(value, expected or _python_type_of(value))
    if problem:
      raise ConfigError(field, problem)
    if isinstance(default, bool):
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
      _check_tuple(field, value)


def check_schema(config: ml_collections.ConfigDict) -> None:
  """The schema part of `validate_config`: fields and types, not values.

  Args:
    config: a config that should follow `config_base.base_config()`.

  Raises:
    ConfigError: an unknown or missing field, or a value of the wrong type.
  """
  _check_schema(config, config_base.base_config())


def _int_in(lo: int, hi: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: lo <= v <= hi), f"an integer >= {lo} and <= {hi}"


def _ints_in(lo: int, hi: int, max_len: int) -> tuple[Callable[[Any], bool], str]:
  return ((lambda v: 0 < len(v) <= max_len and all(lo <= i <= hi for i in v)),
          f"a non-empty tuple of at most {max_len} integers >= {lo} and <= {hi}")


def _rules(c) -> list[tuple[str, Callable[[Any], bool], str]]:
  """(field, predicate, what is allowed) for every single-field rule."""
  is_pos = lambda v: v > 0
  one_of = lambda choices: (lambda v: v in choices, f"one of {choices}")
  up_to = lambda hi: (lambda v: 0 <= v <= hi, f"a number in [0, {hi:g}]")
  lognormal_mean = c.data.synthetic.examples_lognormal_mean
  rules = [
      ("seed", lambda v: 0 <= v <= MAX_SEED, f"an integer >= 0 and <= {MAX_SEED} (JAX's PRNG keys "
       "keep 32 bits of the seed: a larger one would repeat a smaller one's run)"),
      ("algorithm", *one_of(ALGORITHMS)),
      ("data.source", *one_of(DATA_SOURCES)),
      ("data.num_clients", *_int_in(1, MAX_CLIENTS)),
      ("data.partition", *one_of(PARTITIONS)),
      ("data.normalization", *one_of(normalization.NORMALIZATIONS)),
      ("data.dirichlet_alpha", lambda v: 0 < v <= MAX_DIRICHLET_ALPHA,
       f"a number in (0, {MAX_DIRICHLET_ALPHA:g}]"),
      ("data.classes_per_client", *_int_in(1, MAX_CLASSES)),
      ("data.min_examples_per_client", *_int_in(1, MAX_EXAMPLES)),
      ("data.max_examples_per_client", lambda v: v >= 0, "an integer >= 0 (0: no cap)"),
      ("data.max_eval_examples_per_client", lambda v: v >= 0,
       "an integer >= 0 (0: no cap)"),
      ("data.validation_fraction", lambda v: 0 <= v < 1, "a number in [0, 1)"),
      ("data.evaluate_on", lambda v: v == "test" or (
          v == "validation" and c.data.validation_fraction > 0),
       "'test', or 'validation' with data.validation_fraction > 0"),
      ("data.feature_noise_std", *up_to(MAX_SCALE)),
      ("data.label_noise_rate", lambda v: 0 <= v < 1, "a number in [0, 1)"),
      ("data.noise_profile", *one_of(NOISE_PROFILES)),
      ("data.synthetic.alpha", lambda v: 0 <= v <= MAX_SCALE, f"a variance in [0, {MAX_SCALE:g}]"),
      ("data.synthetic.beta", lambda v: 0 <= v <= MAX_SCALE, f"a variance in [0, {MAX_SCALE:g}]"),
      ("data.synthetic.num_features", *_int_in(1, MAX_FEATURES)),
      ("data.synthetic.num_classes", *_int_in(2, MAX_CLASSES)),
      ("data.synthetic.min_classes", lambda v: v == 0 or 2 <= v <= c.data.synthetic.num_classes,
       "0, or an integer in [2, data.synthetic.num_classes]"),
      ("data.synthetic.examples_lognormal_mean", lambda v: v <= MAX_LOGNORMAL_TAIL,
       f"a number <= {MAX_LOGNORMAL_TAIL:g} (client sizes exp(N(mean, sigma^2)) beyond "
       "e^43.67 overflow int64)"),
      ("data.synthetic.examples_lognormal_sigma",
       lambda v: v >= 0 and lognormal_mean + LOGNORMAL_SIGMAS * v <= MAX_LOGNORMAL_TAIL,
       f"a number in [0, {(MAX_LOGNORMAL_TAIL - lognormal_mean) / LOGNORMAL_SIGMAS:g}] "
       f"(examples_lognormal_mean + {LOGNORMAL_SIGMAS} * sigma <= {MAX_LOGNORMAL_TAIL:g}, so "
       f"an {LOGNORMAL_SIGMAS}-sigma client size still fits in int64)"),
      ("data.synthetic.max_examples", *_int_in(2, MAX_EXAMPLES)),
      ("data.synthetic.test_fraction", lambda v: 0 < v < 1, "a number in (0, 1)"),
      ("model.name", *one_of(models.MODEL_NAMES)),
      ("model.hidden_sizes", *_ints_in(1, MAX_UNITS, MAX_DENSE_BLOCKS)),
      ("model.cnn_features", *_ints_in(1, MAX_CHANNELS, MAX_CONV_BLOCKS)),
      ("model.cnn_dense", *_int_in(1, MAX_UNITS)),
      ("model.resnet_widths", *_ints_in(1, MAX_CHANNELS, MAX_CONV_BLOCKS)),
      ("model.resnet_blocks_per_stage", *_int_in(1, MAX_BLOCKS_PER_STAGE)),
      ("model.dtype", *one_of(DTYPES)),
      ("model.conv_impl", *one_of(models.CONV_IMPLS)),
      ("model.padding", *one_of(models.PADDINGS)),
      ("model.init", *one_of(models.INITS)),
      ("split.orientation", *one_of(split_model.ORIENTATIONS)),
      ("split.client_bottom_blocks", lambda v: v >= 0, "an integer >= 0"),
      ("split.client_top_blocks", lambda v: v >= 0, "an integer >= 0"),
      ("split.task_weights", *one_of(TASK_WEIGHTS)),
      ("split.implementation", *one_of(IMPLEMENTATIONS)),
      ("split.client_init", *one_of(CLIENT_INITS)),
      ("split.client_init", lambda v: v == "independent" or not c.model.client_width_groups,
       "'independent' with model.client_width_groups (clients of other widths cannot "
       "share one initialization)"),
      ("split.client_lr_scaling", *one_of(CLIENT_LR_SCALINGS)),
      ("split.client_lr_multipliers",
       lambda v: len(v) in (0, c.data.num_clients) and all(m > 0 for m in v),
       "() or one positive number per client (data.num_clients of them)"),
      *[(f"privacy.{name}", lambda v: 0 <= v < math.inf, "a finite number >= 0 (0: off)")
        for name in PRIVACY_FIELDS],
      ("batch_size", *_int_in(1, MAX_BATCH)),
      ("num_steps", *_int_in(1, MAX_STEPS)),
      ("log_every", *_int_in(1, MAX_STEPS)),
      ("eval_every", *_int_in(1, MAX_STEPS)),
      ("checkpoint_every", *_int_in(1, MAX_STEPS)),
      ("eval_batch_size", *_int_in(1, MAX_BATCH)),
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
  if c.data.source in client_splits.SOURCES and not c.data.client_path:
    what = "directory of client_<m>.npz files" if c.data.source == "client_dir" else (
        ".npz file with client_train and client_test")
    raise ConfigError("data.client_path", f"must name a {what} when data.source is "
                      f"{c.data.source!r}")
  if c.data.source == "synthetic" and c.data.normalization not in ("auto", "none"):
    raise ConfigError("data.normalization", "must be 'auto' or 'none' for synthetic data "
                      f"(used as drawn); got {c.data.normalization!r}")
  if c.data.source == "synthetic" and c.data.rotation_step_degrees != 0:
    raise ConfigError("data.rotation_step_degrees", "must be 0 for synthetic (non-image) data")
  if c.data.source == "synthetic" and c.model.name != "mlp":
    raise ConfigError("model.name", f"must be 'mlp' for synthetic (vector) data, got "
                      f"{c.model.name!r}; cnn and resnet need image data")
  if c.data.source == "tfds":
    _check_tfds_shapes(c, names)


def _check_tfds_shapes(c, names: list[str]) -> None:
  """What the known TFDS image shapes decide before anything is loaded."""
  shapes = {name: sources.TFDS_INPUT_SHAPES[name] for name in names}
  if len(set(shapes.values())) > 1:
    raise ConfigError("data.name", "mixed datasets must share one input shape, got "
                      + ", ".join(f"{n} {'x'.join(map(str, s))}" for n, s in shapes.items()))
  height, width, _ = next(iter(shapes.values()))
  # Each CNN block max-pools 2x2 (floor), after a 'valid' convolution also trims 4 pixels:
  # a block that leaves no pixel would give the dense block no input at all, and the run
  # would train only biases, silently.
  side, most = min(height, width), 0
  while models.conv_pool_side(side, c.model.padding) >= 1:
    side, most = models.conv_pool_side(side, c.model.padding), most + 1
  if c.model.name == "cnn" and len(c.model.cnn_features) > most:
    how = "halves" if c.model.padding == "same" else "trims 4 pixels off and halves"
    raise ConfigError("model.cnn_features", f"each block {how} the {height}x{width} "
                      f"{c.data.name} images, so at most {most} blocks keep a pixel; got "
                      f"{len(c.model.cnn_features)} blocks {tuple(c.model.cnn_features)}")


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
      ("fl.local_steps", *_int_in(1, MAX_LOCAL_STEPS)),
      ("fl.local_epochs", lambda v: 0 <= v <= MAX_LOCAL_EPOCHS,
       f"an integer >= 0 and <= {MAX_LOCAL_EPOCHS} (0: fl.local_steps counts the local "
       "steps)"),
      ("fl.client_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]"),
      ("fl.aggregation_weights", lambda v: v in AGGREGATION_WEIGHTS,
       f"one of {AGGREGATION_WEIGHTS}"),
      ("fl.fedrep_head_blocks", lambda v: v >= 0, "an integer >= 0"),
      ("fl.fedrep_head_steps", *_int_in(0, MAX_LOCAL_STEPS)),
      ("fl.num_components", *_int_in(1, MAX_COMPONENTS)),
  ]
  for field, predicate, allowed in rules:
    value = _get(c, field)
    if not predicate(value):
      raise ConfigError(field, f"must be {allowed}; got {value!r}")
  if c.fl.local_epochs and c.algorithm not in methods.ROUND_ALGORITHMS:
    raise ConfigError("fl.local_epochs", f"must be 0 with algorithm {c.algorithm!r}: only "
                      f"{', '.join(methods.ROUND_ALGORITHMS)} train in local rounds; got "
                      f"{c.fl.local_epochs}")
  # SplitFed's split step j = round * K + k indexes fold_in with an int32 (splitfed.py);
  # with local epochs its minibatches come from a key per round instead.
  if (c.algorithm in ("splitfed_v1", "splitfed_v2") and not c.fl.local_epochs
      and c.num_steps * c.fl.local_steps > INT32_MAX):
    raise ConfigError("fl.local_steps", f"num_steps x fl.local_steps counts SplitFed's split "
                      f"steps in an int32, so it must be <= {INT32_MAX}; got {c.num_steps} x "
                      f"{c.fl.local_steps}")
  if not c.fl.local_epochs:  # with local epochs K depends on the data: splitfed.py checks
    check_server_steps(c, c.fl.local_steps)
  n = models.num_blocks(c.model)
  if c.algorithm == "fedrep" and c.fl.fedrep_head_blocks >= n:
    raise ConfigError("fl.fedrep_head_blocks", f"the {c.model.name} has {n} blocks and the "
                      f"shared body needs at least one, so it must be <= {n - 1}; got "
                      f"{c.fl.fedrep_head_blocks}")


def check_server_steps(c, local_steps: int) -> None:
  """Refuses a decaying server schedule that SplitFed v2 would count past int32.

  SplitFed v2's one server model takes K steps per sampled client per round, and optax
  evaluates a decaying schedule with the total as an int32 (a linear schedule beyond it
  fails inside the compiled step).

  Args:
    c: the config.
    local_steps: K (`fl.local_steps`, or the largest client's steps with local epochs).

  Raises:
    ConfigError: naming server_optimizer.schedule.
  """
  server_steps = c.num_steps * local_steps * methods.num_sampled(
      c.fl.client_fraction, c.data.num_clients)
  if (c.algorithm == "splitfed_v2" and c.server_optimizer.schedule != "constant"
      and server_steps > INT32_MAX):
    raise ConfigError("server_optimizer.schedule", f"must be 'constant' when SplitFed v2's "
                      f"server takes more than {INT32_MAX} steps (num_steps x local steps x "
                      f"sampled clients = {server_steps}): decaying schedules count in int32")


def _check_privacy(c) -> None:
  """A defence needs MTSL and the message it protects (docs/privacy.md)."""
  on = [name for name in PRIVACY_FIELDS if c.privacy[name] > 0]
  if not on:
    return
  if c.algorithm != "mtsl":
    raise ConfigError(f"privacy.{on[0]}", f"the defences apply to algorithm 'mtsl' only; got "
                      f"algorithm {c.algorithm!r} (set privacy.{on[0]} = 0)")
  orient = c.split.orientation
  for name in on:
    if name in ("smashed_noise_std", "nopeek_weight") and orient == "top":
      raise ConfigError(f"privacy.{name}", "protects the smashed data a client bottom sends "
                        "up; orientation 'top' has no client bottom (use 'bottom' or "
                        "'u_shaped')")
    if name in ("cut_grad_clip", "cut_grad_noise_std") and orient == "bottom":
      raise ConfigError(f"privacy.{name}", "protects the cut-layer gradients a client head "
                        "sends up; in orientation 'bottom' the server holds the head and the "
                        "labels (use 'u_shaped' or 'top')")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks every field of `config`; raises ConfigError on the first problem.

  Pure Python and numpy: it touches no JAX backend (launch/train.py runs it before
  `jax.distributed` starts) and loads no data.

  Args:
    config: an experiment config built from `config_base.base_config()`.

  Raises:
    ConfigError: naming the field and what is allowed, including a run whose memory lower
      bound (`memory.memory_estimate`) exceeds the machine's physical memory.
  """
  check_schema(config)
  for field, predicate, allowed in _rules(config):
    value = _get(config, field)
    if not predicate(value):
      raise ConfigError(field, f"must be {allowed}; got {value!r}")
  _check_data_names(config)
  if config.algorithm in SPLIT_ALGORITHMS:  # the cut means nothing to unsplit methods
    _check_split(config)
  _check_privacy(config)
  _check_client_groups(config)
  _check_fl(config)
  memory.check_memory(config)


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
