"""The comparison's grid: datasets, heterogeneity settings, methods, budget and LR grid.

Every run of the comparison is one config built by `make_config` from four names —
dataset, setting, method, learning rate — plus the shared budget. What makes the methods
comparable:

  * the same data: 10 clients, the same partition and transforms for a given (dataset,
    setting, seed); 10% of every client's train examples are held out as a validation
    split in EVERY run, so the tuning runs (evaluated on it) and the final runs (evaluated
    on the test set) train on the same examples;
  * the same model: one block list (an MLP 784-200-200-10 on 28x28 images, the CNN on
    CIFAR), cut per method (MTSL's orientations, SplitFed's cut, FedRep's head);
  * the same budget of client samples: every method processes `budget_steps x batch_size`
    training examples per client (a federated round of K local steps counts K steps;
    FedRep's round counts its head steps too), so `num_steps` differs per method;
  * the same learning-rate grid, tuned per (dataset, method) on the validation split of
    one representative setting (`DatasetSpec.tune_setting`), and the same evaluation
    points: `EVALS` evaluations spread evenly over the budget.
"""

import dataclasses
from typing import Any

import ml_collections

from mtsl_jax import config_base, validation

NUM_CLIENTS = 10
BATCH_SIZE = 32
VALIDATION_FRACTION = 0.1
EVALS = 10                     # evaluation points per run, evenly spaced over the budget
LOCAL_STEPS = 5                # K of every federated method
LR_GRID = (0.03, 0.1, 0.3)     # the same grid for every method
SEEDS = (0, 1, 2)

# Heterogeneity settings: data.* overrides on top of the dataset's own.
SETTINGS: dict[str, dict[str, Any]] = {
    "iid": {"partition": "iid"},
    "dirichlet_1.0": {"partition": "dirichlet", "dirichlet_alpha": 1.0},
    "dirichlet_0.3": {"partition": "dirichlet", "dirichlet_alpha": 0.3},
    "dirichlet_0.1": {"partition": "dirichlet", "dirichlet_alpha": 0.1},
    "2_classes": {"partition": "shards", "classes_per_client": 2},
    "label_permutation": {"partition": "iid", "label_permutation": True},
    # Half the clients hold MNIST, half Fashion-MNIST (i.i.d. within each group).
    "mixture": {"partition": "iid"},
    # The embedded Synthetic(1, 1) clients are heterogeneous by construction.
    "synthetic": {},
}
IMAGE_SETTINGS = ("iid", "dirichlet_1.0", "dirichlet_0.3", "dirichlet_0.1", "2_classes",
                  "label_permutation")

# Methods: top-level config overrides (dotted paths). `lr_fields` are the fields the tuned
# learning rate goes to; the federated methods keep a server learning rate of 1 (plain
# averaging of the clients' models, FedAvg's server step in FedOpt form).
@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One compared method.

  Attributes:
    overrides: dotted config fields -> values.
    lr_fields: the fields set to the tuned learning rate.
    client_steps_per_step: client optimizer steps (of batch_size examples) per loop step.
  """
  overrides: dict[str, Any]
  lr_fields: tuple[str, ...]
  client_steps_per_step: int


_SPLIT_LRS = ("server_optimizer.learning_rate", "client_optimizer.learning_rate")
# The federated methods' averages weight the clients uniformly, as they did when the
# recorded comparison (results/runs.jsonl) ran: then they took split.task_weights,
# 'uniform'; fl.aggregation_weights now defaults to 'data_size'. Pinned so that the grid
# keeps reproducing its records.
_AVERAGING = {"fl.local_steps": LOCAL_STEPS, "fl.aggregation_weights": "uniform"}
_FL = {"server_optimizer.learning_rate": 1.0, **_AVERAGING}
METHODS: dict[str, MethodSpec] = {
    "mtsl_u_shaped": MethodSpec({"algorithm": "mtsl", "split.orientation": "u_shaped",
                                 "split.client_bottom_blocks": 1,
                                 "split.client_top_blocks": 1}, _SPLIT_LRS, 1),
    "mtsl_bottom": MethodSpec({"algorithm": "mtsl", "split.orientation": "bottom",
                               "split.client_bottom_blocks": 1,
                               "split.client_top_blocks": 0}, _SPLIT_LRS, 1),
    "mtsl_top": MethodSpec({"algorithm": "mtsl", "split.orientation": "top",
                            "split.client_bottom_blocks": 0,
                            "split.client_top_blocks": 1}, _SPLIT_LRS, 1),
    "fedavg": MethodSpec({"algorithm": "fedavg", **_FL},
                         ("client_optimizer.learning_rate",), LOCAL_STEPS),
    "fedem": MethodSpec({"algorithm": "fedem", "fl.num_components": 3, **_FL},
                        ("client_optimizer.learning_rate",), LOCAL_STEPS),
    "splitfed_v1": MethodSpec({"algorithm": "splitfed_v1", **_AVERAGING,
                               "split.orientation": "bottom", "split.client_bottom_blocks": 1,
                               "split.client_top_blocks": 0}, _SPLIT_LRS, LOCAL_STEPS),
    "splitfed_v2": MethodSpec({"algorithm": "splitfed_v2", **_AVERAGING,
                               "split.orientation": "bottom", "split.client_bottom_blocks": 1,
                               "split.client_top_blocks": 0}, _SPLIT_LRS, LOCAL_STEPS),
    "fedrep": MethodSpec({"algorithm": "fedrep", "fl.fedrep_head_blocks": 1,
                          "fl.fedrep_head_steps": LOCAL_STEPS, **_FL},
                         ("client_optimizer.learning_rate",), 2 * LOCAL_STEPS),
    "local": MethodSpec({"algorithm": "local"}, ("client_optimizer.learning_rate",), 1),
    "centralized": MethodSpec({"algorithm": "centralized"},
                              ("server_optimizer.learning_rate",), 1),
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset (or mixture) of the comparison.

  Attributes:
    data: data.* overrides (source, name; paths are filled in by `make_config`).
    model: model.* overrides.
    settings: the heterogeneity settings run on it.
    tune_setting: the setting whose validation split picks each method's learning rate.
    budget_steps: client steps (of BATCH_SIZE examples) per client in every run.
    where: 'cpu' (part of the default CPU suite), 'gpu' (defined; needs a GPU and the
      TFDS data), or 'check' (a small labelled CPU check).
    note: one line for the report (where the data came from, what is partial).
  """
  data: dict[str, Any]
  model: dict[str, Any]
  settings: tuple[str, ...]
  tune_setting: str
  budget_steps: int
  where: str
  note: str


_MLP = {"name": "mlp", "hidden_sizes": (200, 200)}
_CNN = {"name": "cnn", "cnn_features": (32, 64), "cnn_dense": 512}
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec({"source": "tfds", "name": "mnist"}, _MLP, IMAGE_SETTINGS,
                         "dirichlet_0.3", 300, "cpu", "MNIST, complete (TFDS data_dir)"),
    "fashion_mnist": DatasetSpec({"source": "tfds", "name": "fashion_mnist"}, _MLP,
                                 IMAGE_SETTINGS, "dirichlet_0.3", 300, "cpu",
                                 "Fashion-MNIST, complete (TFDS data_dir)"),
    "mnist+fashion_mnist": DatasetSpec(
        {"source": "tfds", "name": "mnist,fashion_mnist"}, _MLP, ("mixture",), "mixture",
        300, "cpu", "5 MNIST clients + 5 Fashion-MNIST clients (TFDS data_dir)"),
    "cifar10": DatasetSpec({"source": "tfds", "name": "cifar10"}, _CNN, IMAGE_SETTINGS,
                           "dirichlet_0.3", 3000, "gpu", "CIFAR-10, complete (TFDS data_dir)"),
    "cifar100": DatasetSpec({"source": "tfds", "name": "cifar100"}, _CNN,
                            tuple(s for s in IMAGE_SETTINGS if s != "2_classes"),
                            "dirichlet_0.3", 3000, "gpu", "CIFAR-100, complete (TFDS data_dir)"),
    "cifar10_subset": DatasetSpec(
        {"source": "npz", "npz_path": "cifar10_partial.npz"}, _MLP, ("dirichlet_0.3",),
        "dirichlet_0.3", 200, "check",
        "CIFAR-10 SUBSET: the first 4000 train / 1000 test images only (npz), MLP; "
        "a CPU-sized check, not the paper's CIFAR-10 setting"),
    "synthetic": DatasetSpec({"source": "synthetic"}, {"name": "mlp", "hidden_sizes": (32, 32)},
                             ("synthetic",), "synthetic", 200, "check",
                             "embedded Synthetic(1, 1) (tests and quick demos)"),
}

# Robustness: noise kinds and levels added to the tuning setting of a dataset (level 0 is
# the main run of that setting). Every client gets the same level ('constant' profile).
NOISE = {"feature_noise_std": (0.5, 1.0, 2.0), "label_noise_rate": (0.2, 0.4)}


def num_steps(method: str, budget_steps: int) -> int:
  """Loop steps giving `method` the budget of client steps (it must divide evenly)."""
  per = METHODS[method].client_steps_per_step
  if budget_steps % (per * EVALS):
    raise validation.ConfigError(
        "budget_steps", f"{budget_steps} must be a multiple of {per * EVALS} "
        f"({method}: {per} client steps per loop step, {EVALS} evaluations)")
  return budget_steps // per


def make_config(dataset: str, setting: str, method: str, learning_rate: float, *,
                tune: bool = False, noise: tuple[str, float] | None = None,
                budget_steps: int | None = None, tfds_data_dir: str = "",
                npz_dir: str = "") -> ml_collections.ConfigDict:
  """The config of one run of the comparison.

  Args:
    dataset: a key of DATASETS.
    setting: a key of SETTINGS (one of the dataset's settings).
    method: a key of METHODS.
    learning_rate: the value given to the method's `lr_fields`.
    tune: evaluate on the validation split instead of the test set.
    noise: (data field, level) from NOISE, or None.
    budget_steps: overrides the dataset's budget (tests use small ones).
    tfds_data_dir: TFDS data_dir for 'tfds' sources ('' = TFDS's default).
    npz_dir: directory of the npz files of 'npz' sources.

  Returns:
    A validated config (seed 0; the runner sets the seeds).

  Raises:
    validation.ConfigError: for an unknown name or a budget the methods cannot share.
  """
  for field, value, table in (("dataset", dataset, DATASETS), ("setting", setting, SETTINGS),
                              ("method", method, METHODS)):
    if value not in table:
      raise validation.ConfigError(field, f"must be one of {sorted(table)}, got {value!r}")
  spec, m = DATASETS[dataset], METHODS[method]
  budget = budget_steps or spec.budget_steps
  steps = num_steps(method, budget)
  c = config_base.base_config()
  c.data.num_clients = NUM_CLIENTS
  c.data.validation_fraction = VALIDATION_FRACTION
  c.data.evaluate_on = "validation" if tune else "test"
  c.data.tfds_data_dir = tfds_data_dir
  for key, value in {**spec.data, **SETTINGS[setting]}.items():
    c.data[key] = f"{npz_dir}/{value}" if key == "npz_path" and npz_dir else value
  if noise is not None:
    c.data[noise[0]] = noise[1]
  for key, value in spec.model.items():
    c.model[key] = value
  c.update_from_flattened_dict(dict(m.overrides, **{f: learning_rate for f in m.lr_fields}))
  c.batch_size = BATCH_SIZE
  c.num_steps = steps
  c.log_every = c.eval_every = steps // EVALS
  c.checkpoint_every = steps  # runs are short; an interrupted one restarts its group
  c.progress_bar = False
  validation.validate_config(c)
  return c
