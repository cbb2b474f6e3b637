"""The second comparison's grid: CNN cuts, 2-D learning-rate grids, plateau budgets.

Version 2 of the comparison (results/v2/) fixes what a reviewer found in version 1
(results/REPORT.md, whose grid stays in `grid.py`):

  * models and cuts: a CNN (conv 5x5 blocks, a dense block, the head); every split method
    cuts after the FIRST conv block, so the server holds nearly all parameters
    (server-heavy). MTSL runs in two orientations: 'bottom' (the client holds the first
    block, the server the rest including the head) and 'u_shaped' (the client also holds
    the head);
  * learning rates: each method is tuned on a 2-D grid, split methods over server rate x
    client rate, federated methods over client rate x server rate (a FedOpt server step;
    plain averaging is server rate 1). Axes are log-spaced in half decades and span two
    decades (5 x 5 = 25 tuning runs); local-only training, which has one rate, gets the
    same 25 runs on one axis spanning four decades. A chosen point on an edge extends
    its axis by a half decade in that direction (`v2_tuning`);
  * budgets: a stated maximum of client steps per dataset with 50 evaluations (every 2%
    of the budget); the report marks runs that did not reach a plateau (`PLATEAU_*`);
  * seeds: 5 per cell (a seed fixes the partition, shared by all methods, so methods are
    compared paired over seeds);
  * K: every federated method at K = 5 local steps, and FedAvg and SplitFed v1 also at
    K = 1, 20 and one mean local epoch.

A PROFILE says how much of this a machine runs: 'full' is the grid above; 'cpu' is what
a 2-core CPU produces in a session (CIFAR-10 under Dirichlet 0.1 and 0.5, 3 seeds,
shorter budgets, the evaluated split capped), and every record names its profile and
its reductions.
"""

import dataclasses
import math
from typing import Any

import ml_collections

from mtsl_jax import config_base, validation
from mtsl_jax.comparison import grid as v1_grid

NUM_CLIENTS = v1_grid.NUM_CLIENTS
BATCH_SIZE = v1_grid.BATCH_SIZE
VALIDATION_FRACTION = v1_grid.VALIDATION_FRACTION
EVALS = 50                 # evaluations per main run: every 2% of the budget
TUNE_EVALS = 5             # evaluations per tuning run; the score is their last 3
LOCAL_STEPS = 5            # K of every federated method's main row

# Learning-rate axes, as powers of ten in half decades (two decades, five points).
SPLIT_AXIS = (-2.5, -2.0, -1.5, -1.0, -0.5)        # server and client rates of split methods
FEDOPT_SERVER_AXIS = (-1.0, -0.5, 0.0, 0.5, 1.0)   # FedOpt server rate (1 = averaging)
LOCAL_AXIS = tuple(-3.5 + i / 6 for i in range(25))  # local-only: 25 points, four decades
AXIS_STEP = 0.5            # an edge extension adds this many decades
MAX_EXTENSIONS = 2         # per axis and direction

SETTINGS: dict[str, dict[str, Any]] = {
    **{k: v for k, v in v1_grid.SETTINGS.items() if k != "synthetic"},
    "dirichlet_0.5": {"partition": "dirichlet", "dirichlet_alpha": 0.5},
    "synthetic": {},
}
IMAGE_SETTINGS = ("iid", "dirichlet_1.0", "dirichlet_0.5", "dirichlet_0.3", "dirichlet_0.1",
                  "2_classes", "label_permutation")

# The models (model.* overrides): the CNN of every image dataset, and a small MLP for the
# embedded synthetic data. Public so that the report states each cut's costs on them.
CNN = {"name": "cnn", "cnn_features": (16, 32), "cnn_dense": 128}
SYNTHETIC_MLP = {"name": "mlp", "hidden_sizes": (16, 16)}
_CUT_BOTTOM = {"split.orientation": "bottom", "split.client_bottom_blocks": 1,
               "split.client_top_blocks": 0}
_CUT_U = {"split.orientation": "u_shaped", "split.client_bottom_blocks": 1,
          "split.client_top_blocks": 1}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One compared method (or one K of a federated method).

  Attributes:
    overrides: dotted config fields -> values.
    axes: 'split' (server x client rate), 'fedopt' (client x FedOpt server rate) or
      'local' (one client rate).
    local_steps: K, 'epoch' (one mean local epoch) or None (no rounds).
    client_steps_per_local_step: client optimizer steps per local step (FedRep: a head
      step and a body step).
  """
  overrides: dict[str, Any]
  axes: str
  local_steps: int | str | None = None
  client_steps_per_local_step: int = 1


def _federated(algorithm: str, k: int | str, extra: dict | None = None,
               per: int = 1, axes: str = "fedopt") -> MethodSpec:
  overrides = {"algorithm": algorithm, "fl.aggregation_weights": "data_size", **(extra or {})}
  return MethodSpec(overrides, axes, k, per)


def _methods() -> dict[str, MethodSpec]:
  methods = {
      "mtsl_bottom": MethodSpec({"algorithm": "mtsl", **_CUT_BOTTOM}, "split"),
      "mtsl_u_shaped": MethodSpec({"algorithm": "mtsl", **_CUT_U}, "split"),
      "fedavg": _federated("fedavg", LOCAL_STEPS),
      "fedem": _federated("fedem", LOCAL_STEPS, {"fl.num_components": 3}),
      "splitfed_v1": _federated("splitfed_v1", LOCAL_STEPS, _CUT_BOTTOM, axes="split"),
      "splitfed_v2": _federated("splitfed_v2", LOCAL_STEPS, _CUT_BOTTOM, axes="split"),
      # FedRep's round: K head steps (body frozen), then K body steps.
      "fedrep": _federated("fedrep", LOCAL_STEPS, {"fl.fedrep_head_blocks": 1}, per=2),
      "local": MethodSpec({"algorithm": "local"}, "local"),
  }
  for k in (1, 20, "epoch"):
    methods[f"fedavg_k{k}"] = _federated("fedavg", k)
    methods[f"splitfed_v1_k{k}"] = _federated("splitfed_v1", k, _CUT_BOTTOM, axes="split")
  return methods


METHODS: dict[str, MethodSpec] = _methods()
MAIN_METHODS = ("mtsl_bottom", "mtsl_u_shaped", "fedavg", "fedem", "splitfed_v1",
                "splitfed_v2", "fedrep", "local")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset (or mixture) of the comparison v2.

  Attributes:
    data: data.* overrides.
    settings: the heterogeneity settings run on it.
    tune_setting: the setting whose validation split tunes every method.
    train_examples: train examples of the whole dataset (for 'one mean local epoch').
    max_client_steps: the budget's maximum, client steps (of BATCH_SIZE) per client.
    tune_client_steps: the tuning runs' budget.
    noise: whether the noise rows (per-client 'linear' levels) run on it.
  """
  data: dict[str, Any]
  settings: tuple[str, ...]
  tune_setting: str
  train_examples: int
  max_client_steps: int
  tune_client_steps: int
  noise: bool = False


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec({"source": "tfds", "name": "mnist"}, IMAGE_SETTINGS,
                         "dirichlet_0.3", 60000, 3000, 1000, noise=True),
    "fashion_mnist": DatasetSpec({"source": "tfds", "name": "fashion_mnist"}, IMAGE_SETTINGS,
                                 "dirichlet_0.3", 60000, 3000, 1000, noise=True),
    "mnist+fashion_mnist": DatasetSpec({"source": "tfds", "name": "mnist,fashion_mnist"},
                                       ("mixture",), "mixture", 120000, 3000, 1000),
    "cifar10": DatasetSpec({"source": "tfds", "name": "cifar10"}, IMAGE_SETTINGS,
                           "dirichlet_0.3", 50000, 6000, 2000),
    # The embedded data: for tests and a first look, never for a verdict.
    "synthetic": DatasetSpec({"source": "synthetic"}, ("synthetic",), "synthetic", 0, 100, 50),
}
# Noise rows: per-client levels rising linearly from 0 (client 0) to the value (last).
NOISE = {"feature_noise_std": 2.0, "label_noise_rate": 0.4}


@dataclasses.dataclass(frozen=True)
class Profile:
  """How much of the grid one kind of machine runs.

  Attributes:
    datasets: dataset -> the settings run (empty: the dataset's own list).
    methods: the methods run.
    seeds: the seeds of every main cell.
    max_client_steps, tune_client_steps: budget overrides per dataset (None: the spec's).
    max_eval_examples: cap on each client's evaluated examples (0: none).
    noise: run the noise rows.
    reductions: one line per way this profile departs from the full grid.
    tune_chunk: tuning points per vmapped program (0: a whole grid round); bounds the
      memory of the vmapped evaluation.
    eval_batch_size: evaluation chunk per client (0: the config's). On a CPU a conv
      net's convolutions gather patches, whose memory grows with the chunk: small
      chunks evaluate several times faster there, with the same counts.
    vmap_seeds: train a main cell's seeds as one vmapped program (on a GPU); False
      trains them one after another, which a CPU does faster (a conv net's replicas do
      not share its cores better than runs in turn).
  """
  datasets: dict[str, tuple[str, ...]]
  methods: tuple[str, ...]
  seeds: tuple[int, ...]
  max_client_steps: dict[str, int]
  tune_client_steps: dict[str, int]
  max_eval_examples: int
  noise: bool
  reductions: tuple[str, ...]
  tune_chunk: int = 0
  eval_batch_size: int = 0
  vmap_seeds: bool = True


PROFILES: dict[str, Profile] = {
    "full": Profile({d: () for d in ("mnist", "fashion_mnist", "mnist+fashion_mnist",
                                     "cifar10")},
                    tuple(m for m in METHODS), (0, 1, 2, 3, 4), {}, {}, 0, True, ()),
    "cpu": Profile({"cifar10": ("dirichlet_0.1", "dirichlet_0.5")}, MAIN_METHODS, (0, 1, 2),
                   {"cifar10": 500}, {"cifar10": 100}, 200, False,
                   ("3 seeds, not 5", "budget 500 client steps (~3.5 mean epochs), not 6000",
                    "tuning runs 100 client steps, not 2000",
                    "evaluations on a random 200 examples per client (same subset for "
                    "every method of a seed), not the whole split",
                    "K = 5 only; no noise rows"), tune_chunk=5, eval_batch_size=20,
                   vmap_seeds=False),
    # What one GPU session fills first: CIFAR-10's CPU settings at the full budget.
    "gpu": Profile({"cifar10": ("dirichlet_0.1", "dirichlet_0.5")}, MAIN_METHODS,
                   (0, 1, 2, 3, 4), {}, {}, 0, False,
                   ("CIFAR-10 under Dirichlet 0.1 and 0.5 only", "K = 5 only; no noise rows")),
    "test": Profile({"synthetic": ()}, MAIN_METHODS, (0, 1), {}, {}, 0, False,
                    ("embedded synthetic data, tiny budgets: a pipeline check",)),
}


def lr_value(exponent: float) -> float:
  """10 ** exponent, rounded to 6 significant digits (so names and keys are stable)."""
  return float(f"{10 ** exponent:.6g}")


def axes_of(method: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The starting (server axis, client axis) of a method's tuning grid, as exponents.

  Local-only training has no server rate: its server axis is (None-like) a single 0.
  """
  return axes_of_kind(METHODS[method].axes)


def axes_of_kind(kind: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The starting (server axis, client axis) of a grid of kind 'split', 'fedopt' or 'local'."""
  if kind == "split":
    return SPLIT_AXIS, SPLIT_AXIS
  if kind == "fedopt":
    return FEDOPT_SERVER_AXIS, SPLIT_AXIS
  return (0.0,), LOCAL_AXIS


def local_steps_value(method: str, dataset: str) -> int | None:
  """K of a federated method on `dataset` (one mean local epoch resolved), else None."""
  k = METHODS[method].local_steps
  if k != "epoch":
    return k
  spec = DATASETS[dataset]
  per_client = spec.train_examples * (1 - VALIDATION_FRACTION) / NUM_CLIENTS
  return max(1, round(per_client / BATCH_SIZE))


def client_steps_per_step(method: str, dataset: str) -> int:
  """Client optimizer steps (of BATCH_SIZE examples) per loop step of `method`."""
  k = local_steps_value(method, dataset)
  return (k or 1) * METHODS[method].client_steps_per_local_step


def schedule(method: str, dataset: str, client_steps: int,
             evals: int) -> tuple[int, int]:
  """(num_steps, eval_every) giving `method` the budget, with `evals` evaluations at most.

  A federated method evaluates at round boundaries; when it has fewer rounds than
  `evals` it evaluates after every round (coarser than asked; the record says so).

  Raises:
    validation.ConfigError: a budget below one loop step of the method.
  """
  return loop_schedule(method, client_steps_per_step(method, dataset), client_steps, evals)


def loop_schedule(method: str, per: int, client_steps: int, evals: int) -> tuple[int, int]:
  """(num_steps, eval_every) of a budget of `client_steps` at `per` client steps per step.

  Args:
    method: the method's name (for the error).
    per: client steps per loop step.
    client_steps: the budget in client steps per client.
    evals: evaluations over the budget: at most evals where the loop has at least
      2 x evals steps; with fewer steps, one evaluation per step (up to 2 x evals - 1).

  Raises:
    validation.ConfigError: a budget below one loop step.
  """
  steps = client_steps // per
  if steps < 1:
    raise validation.ConfigError(
        "max_client_steps", f"{client_steps} client steps are fewer than one step of "
        f"{method} ({per} client steps)")
  every = max(1, steps // evals)
  return steps - steps % every, every


def make_config(dataset: str, setting: str, method: str, server_lr: float, client_lr: float,
                *, tune: bool, client_steps: int, evals: int, seed: int = 0,
                noise: str | None = None, max_eval_examples: int = 0,
                eval_batch_size: int = 0,
                tfds_data_dir: str = "") -> ml_collections.ConfigDict:
  """The config of one run of the comparison v2.

  Args:
    dataset, setting, method: keys of DATASETS, SETTINGS, METHODS.
    server_lr, client_lr: the two rates (local-only ignores server_lr).
    tune: evaluate on the validation split instead of the test set.
    client_steps: the budget in client steps per client.
    evals: evaluations over the budget (at most).
    seed: the run's seed.
    noise: a key of NOISE (per-client linear levels), or None.
    max_eval_examples: cap on each client's evaluated examples (0: none).
    eval_batch_size: evaluation chunk per client (0: the config's, or the cap if smaller).
    tfds_data_dir: TFDS data_dir ('' = TFDS's default).

  Returns:
    A validated config.

  Raises:
    validation.ConfigError: an unknown name, or a budget the method cannot take.
  """
  for field, value, table in (("dataset", dataset, DATASETS), ("setting", setting, SETTINGS),
                              ("method", method, METHODS)):
    if value not in table:
      raise validation.ConfigError(field, f"must be one of {sorted(table)}, got {value!r}")
  if noise is not None and noise not in NOISE:
    raise validation.ConfigError("noise", f"must be one of {sorted(NOISE)}, got {noise!r}")
  spec, m = DATASETS[dataset], METHODS[method]
  c = config_base.base_config()
  c.seed = seed
  c.data.num_clients = NUM_CLIENTS
  c.data.validation_fraction = VALIDATION_FRACTION
  c.data.evaluate_on = "validation" if tune else "test"
  c.data.max_eval_examples_per_client = max_eval_examples
  if max_eval_examples:  # evaluation chunks no longer than the capped split (no padding)
    c.eval_batch_size = min(c.eval_batch_size, max_eval_examples)
  if eval_batch_size:
    c.eval_batch_size = eval_batch_size
  c.data.tfds_data_dir = tfds_data_dir
  for key, value in {**spec.data, **SETTINGS[setting]}.items():
    c.data[key] = value
  if noise is not None:
    c.data[noise] = NOISE[noise]
    c.data.noise_profile = "linear"
  if dataset == "synthetic":
    c.model.update(SYNTHETIC_MLP)
  else:
    c.model.update(CNN)
  overrides = dict(m.overrides)
  k = local_steps_value(method, dataset)
  if k is not None:
    overrides["fl.local_steps"] = k
    if m.client_steps_per_local_step == 2:
      overrides["fl.fedrep_head_steps"] = k
  c.update_from_flattened_dict(overrides)
  c.server_optimizer.learning_rate = server_lr
  c.client_optimizer.learning_rate = client_lr
  c.batch_size = BATCH_SIZE
  c.num_steps, every = schedule(method, dataset, client_steps, evals)
  c.log_every = c.eval_every = every
  c.checkpoint_every = every * max(1, (c.num_steps // every) // 5)
  c.progress_bar = False
  validation.validate_config(c)
  return c


def settings_of(profile: Profile, dataset: str) -> tuple[str, ...]:
  """The settings `profile` runs on `dataset`."""
  return profile.datasets[dataset] or DATASETS[dataset].settings


def budgets(profile: Profile, dataset: str) -> tuple[int, int]:
  """(max client steps of the main runs, client steps of the tuning runs)."""
  spec = DATASETS[dataset]
  return (profile.max_client_steps.get(dataset, spec.max_client_steps),
          profile.tune_client_steps.get(dataset, spec.tune_client_steps))


def decades(axis: tuple[float, ...]) -> float:
  """How many decades an axis of exponents spans."""
  return max(axis) - min(axis) if axis else math.nan
