"""The map of "when does the shared server part help": its axes, cuts, methods, profiles.

The study (docs/when_mtsl_helps.md) asks in which regimes a server part G shared by all
tasks beats each client learning alone, federated averaging, and a personalised FL method.
It maps:

  * examples per client (`EXAMPLES`: a cap on each client's train examples; 0 = all the
    partition gives it) x number of clients (`CLIENTS`). A level is run for a client
    count only while level x clients fits in the dataset (else the cap is nearly "all"
    and the cell would repeat the 'all' column);
  * the cut (`CUTS`), as the share of the parameters on each client: on the MLP
    784-100-100-10 the head alone (~1%), the last two blocks (~12%), the input block
    ('bottom', ~88%) and input block plus head ('u_shaped', ~89%). On an MLP the input
    layer holds most parameters, so the small cuts put the head on the client (the
    'top' orientation: the server holds the input layers). The CNN slice (profiles
    'cnn', 'cpu_cnn') adds the server-heavy 'bottom' cut: the client holds the first
    conv block (~0.2% of the parameters);
  * heterogeneity: Dirichlet(0.3) label skew and per-client label permutations;
  * datasets: MNIST and Fashion-MNIST; CIFAR-10 in the CNN slice (profile 'cnn', for a
    GPU); the embedded synthetic data for tests.

Methods: MTSL at each cut, local-only, FedAvg (K = 5), FedRep (K = 5, head personal) and
centralized training, each tuned on the comparison v2's grids (`v2_grid`: split methods
on server x client rate, FedAvg and FedRep on client x FedOpt server rate, one-rate
methods on a four-decade axis), the chosen point extended to the interior. Tuning runs
once per (dataset, method) at one reference regime (`TUNE_REGIME`) on the validation
split of the tuning setting; the map reuses that point in every cell (a stated reduction).

Ablations (`ABLATIONS`) isolate the shared part at a few regimes: the server part frozen
at its initialisation (random features), one common client initialisation, task weights
by data size, client rates scaled by data size, and no server part at all (each client
owns the whole model: local-only on the same architecture, the 'local' row).

A PROFILE says how much a machine runs; every record names its profile and reductions.
"""

import dataclasses
import re
from typing import Any

import ml_collections

from mtsl_jax import config_base, validation
from mtsl_jax.comparison import v2_grid

BATCH_SIZE = 32
VALIDATION_FRACTION = 0.1   # of each client's train examples, held out in tuning runs only
LOCAL_STEPS = 5             # K of FedAvg and FedRep
EVALS = 20                  # evaluations per main run: every 5% of the budget
TUNE_EVALS = v2_grid.TUNE_EVALS
EXAMPLES = (25, 100, 400, 1600, 0)   # train examples per client; 0 = all
CLIENTS = (10, 50, 200)
SETTINGS = ("dirichlet_0.3", "label_permutation")
TUNE_REGIME = (400, 10)     # (examples per client, clients) of the tuning runs

MLP = {"name": "mlp", "hidden_sizes": (100, 100)}
CNN = v2_grid.CNN          # the CNN slice: conv5x5 16, conv5x5 32, dense 128, head
SYNTHETIC_MLP = v2_grid.SYNTHETIC_MLP


@dataclasses.dataclass(frozen=True)
class Cut:
  """Where MTSL's model is cut.

  Attributes:
    overrides: split.* fields.
    description: the client part, in words.
  """
  overrides: dict[str, Any]
  description: str


CUTS: dict[str, Cut] = {
    "head": Cut({"split.orientation": "top", "split.client_bottom_blocks": 0,
                 "split.client_top_blocks": 1}, "the head (the server holds the input layers)"),
    "top2": Cut({"split.orientation": "top", "split.client_bottom_blocks": 0,
                 "split.client_top_blocks": 2}, "the last two blocks"),
    "bottom": Cut({"split.orientation": "bottom", "split.client_bottom_blocks": 1,
                   "split.client_top_blocks": 0}, "the input block (the server holds the "
                  "rest and the head)"),
    "u_shaped": Cut({"split.orientation": "u_shaped", "split.client_bottom_blocks": 1,
                     "split.client_top_blocks": 1}, "the input block and the head"),
}


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One method of the map.

  Attributes:
    overrides: dotted config fields -> values.
    axes: 'split', 'fedopt' or 'local' (one rate), as in `v2_grid.MethodSpec`.
    cut: the key of CUTS of an MTSL row, else None.
    client_steps_per_step: client optimizer steps per loop step.
  """
  overrides: dict[str, Any]
  axes: str
  cut: str | None = None
  client_steps_per_step: int = 1


def _methods() -> dict[str, MethodSpec]:
  methods = {f"mtsl_{name}": MethodSpec({"algorithm": "mtsl", **cut.overrides}, "split", name)
             for name, cut in CUTS.items()}
  fed = {"fl.local_steps": LOCAL_STEPS, "fl.aggregation_weights": "data_size"}
  methods.update({
      "local": MethodSpec({"algorithm": "local"}, "local"),
      "fedavg": MethodSpec({"algorithm": "fedavg", **fed}, "fedopt",
                           client_steps_per_step=LOCAL_STEPS),
      # FedRep's round: K head steps (body frozen), then K body steps.
      "fedrep": MethodSpec({"algorithm": "fedrep", **fed, "fl.fedrep_head_blocks": 1,
                            "fl.fedrep_head_steps": LOCAL_STEPS}, "fedopt",
                           client_steps_per_step=2 * LOCAL_STEPS),
      # One model on the pooled data; its one rate is the server optimizer's.
      "centralized": MethodSpec({"algorithm": "centralized"}, "local"),
  })
  return methods


METHODS: dict[str, MethodSpec] = _methods()
BASELINES = ("local", "fedavg", "fedrep", "centralized")

# Ablations of an MTSL row: name -> (overrides, what it removes or changes).
ABLATIONS: dict[str, tuple[dict[str, Any], str]] = {
    "frozen_server": ({"split.freeze_server": True},
                      "server part frozen at its initialisation (random features)"),
    "common_init": ({"split.client_init": "common"},
                    "every client part starts from one initialisation"),
    "data_size_weights": ({"split.task_weights": "data_size"},
                          "task weights n_m / sum n instead of uniform"),
    "data_size_rates": ({"split.client_lr_scaling": "data_size"},
                        "client rates scaled by n_m / mean n"),
}
ABLATION_SEPARATOR = "+"   # an ablation run's method: 'mtsl_head+frozen_server'


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset of the map.

  Attributes:
    data: data.* overrides.
    train_examples: train examples of the whole dataset (0: not bounded, synthetic).
  """
  data: dict[str, Any]
  train_examples: int


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec({"source": "tfds", "name": "mnist"}, 60000),
    "fashion_mnist": DatasetSpec({"source": "tfds", "name": "fashion_mnist"}, 60000),
    "cifar10": DatasetSpec({"source": "tfds", "name": "cifar10"}, 50000),
    "synthetic": DatasetSpec({"source": "synthetic"}, 0),
}


@dataclasses.dataclass(frozen=True)
class Profile:
  """How much of the map one kind of machine runs.

  Attributes:
    model: model.* overrides of the image datasets (the embedded data always train
      SYNTHETIC_MLP).
    datasets, settings, examples, clients: the axes run.
    methods: the map's methods.
    seeds: every main cell's seeds (a seed fixes the partition, shared by all methods).
    max_client_steps: the budget, client steps per client (plateaus marked per run).
    tune_client_steps: the tuning runs' budget.
    tune_regime: (examples per client, clients) of the tuning runs.
    ablation_cuts: the MTSL rows ablated.
    ablation_regimes: the (examples, clients) cells ablated.
    reductions: one line per way this profile departs from the full study.
    retune_regimes: (examples, clients) cells where every method the verdicts compare is
      tuned again at the cell itself (first setting, same grids and edge rule) and run
      with the profile's seeds: the check of tuning once at `tune_regime`.
  """
  model: dict[str, Any]
  datasets: tuple[str, ...]
  settings: tuple[str, ...]
  examples: tuple[int, ...]
  clients: tuple[int, ...]
  methods: tuple[str, ...]
  seeds: tuple[int, ...]
  max_client_steps: int
  tune_client_steps: int
  tune_regime: tuple[int, int]
  ablation_cuts: tuple[str, ...]
  ablation_regimes: tuple[tuple[int, int], ...]
  reductions: tuple[str, ...]
  retune_regimes: tuple[tuple[int, int], ...] = ()


_TUNED_ONCE = ("learning rates tuned once per (dataset, method) at 400 examples x 10 "
               "clients, Dirichlet 0.3, and reused in every cell")
_CNN_METHODS = ("mtsl_head", "mtsl_bottom", "mtsl_u_shaped", "local", "fedavg", "fedrep")
PROFILES: dict[str, Profile] = {
    # The whole MLP map (a GPU, or several CPU sessions).
    "full": Profile(MLP, ("mnist", "fashion_mnist"), SETTINGS, EXAMPLES, CLIENTS,
                    tuple(METHODS), (0, 1, 2, 3, 4), 1000, 300, TUNE_REGIME,
                    ("head", "bottom", "u_shaped"), ((25, 50), (100, 50), (0, 50)),
                    (_TUNED_ONCE,), ((25, 10), (0, 10), (25, 200))),
    # What a 2-core CPU runs of it.
    "cpu": Profile(MLP, ("mnist", "fashion_mnist"), SETTINGS, EXAMPLES, CLIENTS,
                   tuple(METHODS), (0, 1, 2, 3, 4), 300, 150, TUNE_REGIME,
                   ("head", "u_shaped"), ((100, 50), (0, 50)),
                   ("budget 300 client steps of 32 examples, not 1000",
                    "tuning runs 150 client steps, not 300", _TUNED_ONCE),
                   # The data axis' two ends, where the tuned-once rates are furthest
                   # from their regime (400 examples).
                   ((25, 10), (0, 10))),
    # The CNN slice (server-heavy 'bottom' cut: the client holds the first conv block).
    "cnn": Profile(CNN, ("mnist", "fashion_mnist", "cifar10"), SETTINGS, (25, 100, 400, 0),
                   (10, 50), _CNN_METHODS, (0, 1, 2, 3, 4), 1000, 300, TUNE_REGIME, ("bottom",),
                   ((100, 10),), ("CNN slice: 4 data levels x 2 client counts", _TUNED_ONCE)),
    "cpu_cnn": Profile(CNN, ("mnist",), ("dirichlet_0.3",), (100, 0), (10,), _CNN_METHODS,
                       (0, 1, 2, 3, 4), 300, 150, TUNE_REGIME, ("bottom",), ((100, 10),),
                       ("CNN slice on a CPU: MNIST, Dirichlet 0.3, 10 clients, 100 or all "
                        "examples", "budget 300 client steps of 32 examples, not 1000",
                        "tuning runs 150 client steps, not 300", _TUNED_ONCE)),
    "test": Profile(MLP, ("synthetic",), ("synthetic",), (20, 0), (3, 4), tuple(METHODS),
                    (0, 1), 20, 10, (0, 3), ("head",), ((0, 3),),
                    ("embedded synthetic data, tiny budgets: a pipeline check",), ((20, 3),)),
}


# How records written before the document counted seeds itself named their profile's
# seed count among their reductions ('3 seeds, not 5').
_SEED_COUNT = re.compile(r"\d+ seeds, not \d+")


def states_seed_count(reduction: str) -> bool:
  """Whether a record's reduction line only states its profile's seed count.

  Seeds are not a reduction a profile fixes: a resumable profile grows them across
  sessions, so the document counts each cell's seeds from the records
  (`analysis.seeds_per_cell`) and leaves out this line of older records.

  Args:
    reduction: one line of a record's 'reductions'.

  Returns:
    True for '3 seeds, not 5' and the like.
  """
  return _SEED_COUNT.fullmatch(reduction) is not None


def base_method(method: str) -> str:
  """The tuned method of a row: 'mtsl_head+frozen_server' -> 'mtsl_head'."""
  return method.split(ABLATION_SEPARATOR)[0]


def ablation_of(method: str) -> str | None:
  """The ablation of a row ('frozen_server'), or None for a plain method."""
  parts = method.split(ABLATION_SEPARATOR)
  return parts[1] if len(parts) > 1 else None


def runs_in(dataset: str, examples: int, clients: int) -> bool:
  """Whether a (examples, clients) cell runs on `dataset`.

  A cap is run only while cap x clients fits in the dataset's train examples: above
  that most clients hold fewer examples than the cap, and the cell repeats 'all'.
  """
  total = DATASETS[dataset].train_examples
  return examples == 0 or total == 0 or examples * clients <= total


def regimes(profile: Profile, dataset: str) -> list[tuple[int, int]]:
  """The (examples, clients) cells `profile` runs on `dataset`, clients-major."""
  return [(e, m) for m in profile.clients for e in profile.examples
          if runs_in(dataset, e, m)]


def model_of(dataset: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
  """The model.* overrides a dataset trains: SYNTHETIC_MLP on the embedded data, else
  `model` (None: MLP)."""
  return SYNTHETIC_MLP if dataset == "synthetic" else (model or MLP)


def client_steps_per_step(method: str) -> int:
  """Client optimizer steps (of BATCH_SIZE examples) per loop step of a row."""
  return METHODS[base_method(method)].client_steps_per_step


def make_config(dataset: str, setting: str, method: str, server_lr: float, client_lr: float,
                *, examples: int, clients: int, tune: bool, client_steps: int, evals: int,
                model: dict[str, Any] | None = None, seed: int = 0,
                tfds_data_dir: str = "") -> ml_collections.ConfigDict:
  """The config of one run of the map.

  Args:
    dataset: a key of DATASETS.
    setting: a key of `v2_grid.SETTINGS` (or 'synthetic').
    method: a key of METHODS, or an MTSL key, ABLATION_SEPARATOR and a key of ABLATIONS.
    server_lr, client_lr: the two rates (one-rate methods use client_lr; centralized
      trains its one model with it as the server optimizer's rate).
    examples: the cap on each client's train examples (0: all).
    clients: the number of clients.
    tune: hold out VALIDATION_FRACTION of each client's train examples and evaluate on
      it (tuning); else train on all of them and evaluate on the test set.
    client_steps: the budget, client steps per client.
    evals: evaluations over the budget (at most).
    model: model.* overrides of an image dataset (None: MLP); the embedded data train
      SYNTHETIC_MLP.
    seed: the run's seed.
    tfds_data_dir: TFDS data_dir ('' = TFDS's default).

  Returns:
    A validated config.

  Raises:
    validation.ConfigError: an unknown name, or a budget the method cannot take.
  """
  ablation, base = ablation_of(method), base_method(method)
  for field, value, table in (("dataset", dataset, DATASETS),
                              ("setting", setting, v2_grid.SETTINGS),
                              ("method", base, METHODS)):
    if value not in table:
      raise validation.ConfigError(field, f"must be one of {sorted(table)}, got {value!r}")
  spec = METHODS[base]
  if ablation is not None and (ablation not in ABLATIONS or spec.cut is None):
    raise validation.ConfigError(
        "method", f"an ablation row is an MTSL method, '{ABLATION_SEPARATOR}' and one of "
        f"{sorted(ABLATIONS)}, got {method!r}")
  c = config_base.base_config()
  c.seed = seed
  c.data.num_clients = clients
  c.data.max_examples_per_client = examples
  c.data.validation_fraction = VALIDATION_FRACTION if tune else 0.0
  c.data.evaluate_on = "validation" if tune else "test"
  c.data.tfds_data_dir = tfds_data_dir
  for key, value in {**DATASETS[dataset].data, **v2_grid.SETTINGS[setting]}.items():
    c.data[key] = value
  c.model.update(model_of(dataset, model))
  c.update_from_flattened_dict(dict(spec.overrides))
  if ablation is not None:
    c.update_from_flattened_dict(dict(ABLATIONS[ablation][0]))
  c.server_optimizer.learning_rate = client_lr if base == "centralized" else server_lr
  c.client_optimizer.learning_rate = client_lr
  c.batch_size = BATCH_SIZE
  c.num_steps, every = v2_grid.loop_schedule(method, spec.client_steps_per_step,
                                             client_steps, evals)
  c.log_every = c.eval_every = every
  c.checkpoint_every = every * max(1, (c.num_steps // every) // 4)
  c.progress_bar = False
  validation.validate_config(c)
  return c
