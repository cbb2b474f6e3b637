"""The privacy-utility study: MTSL runs under each defence and strength, attacked.

For every row (family, defence, strength) of `rows()` and every seed, an MTSL run
trains; at each of the profile's window steps (the start, the middle and the end of
training) `messages.record_window` records what the server received over a few steps,
and `attacks.attack_all` scores it. One JSON line per (row, seed) in the records: the
final test accuracy (utility) and, per window, the label-inference AUC and the
input-dependence dCor (leakage); at the end of training (and at every window for the
undefended runs that send smashed data: `reconstruction_windows`) also the
inverse-network reconstruction of client 0's inputs (`reconstruction.attack_client`:
PSNR, SSIM and a fixed classifier's accuracy on the reconstructions, keys 'recon_*').
docs/privacy.md is generated from those lines (`privacy/report.py`).

The rows: no defence; Gaussian noise on the smashed data; the NoPeek penalty; noise on
the cut-layer gradients a client head sends up (label protection); and a deeper client
bottom (two blocks, the cut itself as a defence). Each defence runs at four strengths in
the orientations that send its message ('u_shaped', 'bottom', 'top'); the defences of the
smashed data also at a second cut of 'bottom' and 'u_shaped' (families 'bottom@2',
'u_shaped@2': a client bottom one block deeper), for curves at two cuts. FedAvg's row is the
reference point: its final global model and one client's FedSGD update on a small batch,
inverted (`gradient_inversion`); SplitFed v2's row (one split step per round, the
'bottom' cut) is attacked on its messages like the MTSL rows. The learning rates
are the server map's tuned points on MNIST (results/server_map/runs.jsonl.gz, profile
'cpu', MLP 784-100-100-10), the same for every defence, so a defence's cost in accuracy
is measured at the undefended run's rates.
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Sequence

import jax
import ml_collections

from mtsl_jax import config_base, data, evaluation, seed_batch, train, validation
from mtsl_jax.algorithms import local_training
from mtsl_jax.comparison import records, v2_runner
from mtsl_jax.privacy import (attacker_choice, attacks, gradient_inversion, messages,
                              reconstruction)

# Strengths per defence, from weak to strong (each also runs at 0: the 'none' row).
STRENGTHS = {
    "smashed_noise_std": (0.3, 1.0, 3.0, 10.0),
    "nopeek_weight": (0.1, 0.3, 1.0, 3.0),
    # Each example's cut gradient of a batch-mean loss is ~ 1/B of the loss's: ~1e-2.
    "cut_grad_noise_std": (0.001, 0.003, 0.01, 0.03),
}
# Which defences protect a message each family sends. A family is an orientation at a
# cut; 'name@2' is the orientation's second cut, a client bottom one block deeper:
#   * 'bottom@2': the MLP's middle block moves to the client (client 2 blocks, server the
#     head); its undefended run is the 'bottom' family's deeper-cut row (`base_row`);
#   * 'u_shaped@2': the three-block MLP has one u_shaped cut, so the client bottom gets a
#     hidden layer more (`EXTRA_HIDDEN_LAYERS`: 784-100-100-100-10, cut (2, 1)); the
#     server part and the client head are u_shaped's.
# At the second cuts only the defences of the smashed data run: the head, and so what
# the cut-layer gradients reveal of the labels, is the first cut's.
DEFENCES_OF = {
    "u_shaped": ("smashed_noise_std", "nopeek_weight", "cut_grad_noise_std"),
    "bottom": ("smashed_noise_std", "nopeek_weight", "client_bottom_blocks"),
    "top": ("cut_grad_noise_std",),
    "fedavg": (),   # the reference point: FedAvg's update, inverted (gradient_inversion)
    "splitfed_v2": (),  # SplitFed's messages: one global client-side model, 'bottom' cut
    "bottom@2": ("smashed_noise_std", "nopeek_weight"),
    "u_shaped@2": ("smashed_noise_std", "nopeek_weight"),
}
CUTS = {"u_shaped": (1, 1), "bottom": (1, 0), "top": (0, 1), "bottom@2": (2, 0),
        "u_shaped@2": (2, 1)}
EXTRA_HIDDEN_LAYERS = {"u_shaped@2": 1}  # hidden layers (of the last width) a family adds
# (server, client) rates per orientation: the server map's tuned MNIST points
# (mtsl_u_shaped, mtsl_bottom, mtsl_head, fedavg) at 400 examples x 10 clients; a second
# cut trains at its orientation's rates (not re-tuned).
RATES = {"u_shaped": (0.0316228, 0.316228), "bottom": (0.0316228, 1.0),
         "top": (0.316228, 1.0), "fedavg": (1.0, 0.316228),
         "splitfed_v2": (0.0316228, 1.0)}  # SplitFed is not in the map: MTSL bottom's
# FedSGD (K = 1): the update the server sees is one gradient step, which the attack
# inverts exactly as sent, and the row's budget in client steps is the MTSL rows'.
FEDAVG_LOCAL_STEPS = 1
INVERTED_BATCH = 4   # the FedSGD update the server inverts: 4 of client 0's examples
# The gradient-inversion attack FedAvg's records were scored with. Records of an earlier
# attack (DLG's squared distance, 'dlg': no better than its initial noise at a trained
# model) stay in the append-only file but are superseded: their rows run again.
INVERSION_ATTACK = "inverting_gradients"


# The orientations whose clients send smashed data (the inverse network attacks them),
# and those whose clients send cut-layer gradients of their own head (label inference).
SMASHED_ORIENTATIONS = ("u_shaped", "bottom", "splitfed_v2")
LABEL_ORIENTATIONS = ("u_shaped", "top")


def inversion_setting(record: dict) -> str | None:
  """The attacker setting (`attacker_choice.setting_name`) that scored a FedAvg record;
  records from before it was written down ran at their profile's budget."""
  if "inversion_setting" in record:
    return record["inversion_setting"]
  profile = PROFILES.get(record["profile"])
  return attacker_choice.setting_name(profile.inversion_budget) if profile else None


def fedavg_budget(tuning: Sequence[dict], profile_name: str
                  ) -> gradient_inversion.InversionBudget:
  """The inversion setting FedAvg's row uses: the tuned one (`attacker_choice.chosen` over
  the attacker-tuning records `tuning`), else the profile's own budget."""
  profile = PROFILES[profile_name]
  return (attacker_choice.chosen(tuning, profile_name, profile.inversion_budget)
          or profile.inversion_budget)


def is_current(record: dict, inversion_settings: dict[str, str] | None = None) -> bool:
  """Whether a record counts.

  FedAvg's only when scored by the current inversion attack at the profile's current
  setting (`inversion_settings`: profile -> setting name; None: any setting); an
  undefended run that sends smashed data only when the inverse network attacked it at
  every window (records from before it did so, at the end only, are superseded: their
  rows score again, reusing their checkpoints).
  """
  if record["orientation"] == "fedavg":
    wanted = (inversion_settings or {}).get(record["profile"])
    return (record.get("attack") == INVERSION_ATTACK
            and (wanted is None or inversion_setting(record) == wanted))
  row = _rows_by_name().get(record["row"])
  windows = sorted(map(int, record["attacks"]))
  if row is None or record.get("diverged"):
    return True
  return all(key in record["attacks"][str(t)] for t in windows
             for key in required_scores(row, t, windows))


def _is_undefended(row: "Row") -> bool:
  """Whether `row` is the undefended run of some family (`base_row`)."""
  return any(base_row(Row(family, "none", 0.0)) == row for family in DEFENCES_OF)


def required_scores(row: "Row", t: int, windows) -> tuple[str, ...]:
  """The score keys a row's window t must hold to count as scored.

  The inverse network's at its `reconstruction_windows`; for the undefended runs whose
  clients send cut-layer gradients ('u_shaped', 'top'), each client's label-inference
  AUC and the norm attack at every window (`attacks.attack_all(per_client=True)`).
  """
  keys = ("recon_psnr",) if t in reconstruction_windows(row, windows) else ()
  if row.orientation in LABEL_ORIENTATIONS and _is_undefended(row):
    keys += ("label_auc_clients", "label_auc_norm")
  return keys


@dataclasses.dataclass(frozen=True)
class Row:
  """One defended configuration: family (orientation at a cut), defence ('none' or a
  field) and strength."""
  family: str
  defence: str
  strength: float

  @property
  def orientation(self) -> str:
    """The family's orientation ('bottom@2' -> 'bottom'), or 'fedavg' / 'splitfed_v2'."""
    return self.family.split("@")[0]

  @property
  def name(self) -> str:
    return f"{self.family}/{self.defence}={self.strength:g}"


def rows() -> list[Row]:
  """Every row of the study, undefended first within each family."""
  out = []
  for family, defences in DEFENCES_OF.items():
    if base_row(Row(family, "none", 0.0)).family == family:
      out.append(Row(family, "none", 0.0))
    for defence in defences:
      if defence == "client_bottom_blocks":  # the deeper cut: the client holds 2 blocks
        out.append(Row(family, defence, 2.0))
      else:
        out += [Row(family, defence, s) for s in STRENGTHS[defence]]
  return out


def reconstruction_windows(row: Row, windows) -> tuple[int, ...]:
  """The windows at which the inverse network attacks a row's runs.

  Every window for the undefended run of each family that sends smashed data (how the
  leak evolves over training), the last for the others (the trade-off at the end).
  """
  if row.orientation in SMASHED_ORIENTATIONS and _is_undefended(row):
    return tuple(windows)
  return tuple(windows[-1:])


@functools.cache
def _rows_by_name() -> dict[str, "Row"]:
  """Every row by its name (the study's rows are constants: built once)."""
  return {r.name: r for r in rows()}


def base_row(row: Row) -> Row:
  """The undefended row `row` is paired with: its family's, or for 'bottom@2' the same
  run recorded as the 'bottom' family's deeper cut (trained once)."""
  if row.family == "bottom@2":
    return Row("bottom", "client_bottom_blocks", float(CUTS["bottom@2"][0]))
  return Row(row.family, "none", 0.0)


@dataclasses.dataclass(frozen=True)
class Profile:
  """How much a machine runs.

  Attributes:
    dataset: data.* overrides.
    model: model.* overrides.
    clients: number of clients.
    num_steps: training steps (batch 32 per client).
    windows: the steps at which recorded windows start, increasing; the last window ends
      training (its start + window_steps = num_steps).
    window_steps: W, steps per recorded window.
    seeds: the seeds of every row.
    rates: whether to use RATES (False: 0.1 on both sides, the embedded data's).
    reductions: how it departs from a full study.
    attack_budget: the reconstruction attacker's training (client 0, end of training).
    inversion_budget: the gradient-inversion attacker's optimization (FedAvg's row):
      where its tuning starts (`attacker_choice`), and what the row uses untuned.
  """
  dataset: dict[str, Any]
  model: dict[str, Any]
  clients: int
  num_steps: int
  windows: tuple[int, ...]
  window_steps: int
  seeds: tuple[int, ...]
  rates: bool
  reductions: tuple[str, ...]
  attack_budget: reconstruction.AttackBudget = reconstruction.AttackBudget()
  inversion_budget: gradient_inversion.InversionBudget = gradient_inversion.InversionBudget()


# The verdicts rest on seeds: five, the project's standard (a row with fewer is said in
# the report, and the same command adds the rest).
FIVE_SEEDS = (0, 1, 2, 3, 4)
PROFILES = {
    "cpu": Profile({"source": "tfds", "name": "mnist", "partition": "iid"},
                   {"name": "mlp", "hidden_sizes": (100, 100)}, 10, 300, (0, 150, 292), 8,
                   FIVE_SEEDS, True,
                   ("MNIST (Fashion-MNIST: profile cpu_fashion_mnist; CIFAR-10 not run)",
                    "300 steps of 32 examples per client",
                    "reconstruction attack on client 0, at every window for the undefended "
                    "runs, at the end of training for the defended ones")),
    # The same rows on Fashion-MNIST, at the MNIST rates (not re-tuned: a reduction).
    "cpu_fashion_mnist": Profile(
        {"source": "tfds", "name": "fashion_mnist", "partition": "iid"},
        {"name": "mlp", "hidden_sizes": (100, 100)}, 10, 300, (0, 150, 292), 8, FIVE_SEEDS,
        True, ("Fashion-MNIST at the learning rates tuned on MNIST (not re-tuned)",
               "300 steps of 32 examples per client",
               "reconstruction attack on client 0, at every window for the undefended "
               "runs, at the end of training for the defended ones")),
    "test": Profile({"source": "synthetic"}, {"name": "mlp", "hidden_sizes": (8, 8)}, 3, 20,
                    (0, 18), 2, (0, 1), False, ("embedded synthetic data: a pipeline check",),
                    reconstruction.AttackBudget((16,), 20, (16,), 20, 16),
                    gradient_inversion.InversionBudget(iterations=50)),
}


def make_config(profile: Profile, row: Row, tfds_data_dir: str = "",
                num_steps: int | None = None) -> ml_collections.ConfigDict:
  """The config of one row (seed 0; `seed_batch` sets the others).

  Args:
    profile: the profile.
    row: the defended configuration.
    tfds_data_dir: TFDS data_dir ('' = TFDS's default).
    num_steps: train this many steps (None: the profile's).

  Returns:
    A validated config.
  """
  c = config_base.base_config()
  c.data.update(profile.dataset)
  c.data.num_clients = profile.clients
  c.data.tfds_data_dir = tfds_data_dir
  c.model.update(profile.model)
  if row.orientation == "fedavg":
    c.algorithm = "fedavg"
    c.fl.local_steps = FEDAVG_LOCAL_STEPS
  elif row.orientation == "splitfed_v2":
    # One split step per round: a round is a step of the MTSL rows, and every message the
    # window records is one the run sends.
    c.algorithm = "splitfed_v2"
    c.fl.local_steps = 1
    c.split.orientation = "bottom"
    c.split.client_bottom_blocks, c.split.client_top_blocks = CUTS["bottom"]
  else:
    c.split.orientation = row.orientation
    c.split.client_bottom_blocks, c.split.client_top_blocks = CUTS[row.family]
    hidden = tuple(c.model.hidden_sizes)
    c.model.hidden_sizes = hidden + hidden[-1:] * EXTRA_HIDDEN_LAYERS.get(row.family, 0)
  if row.defence == "client_bottom_blocks":
    c.split.client_bottom_blocks = int(row.strength)
  elif row.defence != "none":
    c.privacy[row.defence] = float(row.strength)
  server_lr, client_lr = RATES[row.orientation] if profile.rates else (0.1, 0.1)
  c.server_optimizer.learning_rate = server_lr
  c.client_optimizer.learning_rate = client_lr
  c.batch_size = 32 if profile.rates else 4
  c.num_steps = num_steps or profile.num_steps
  c.log_every = c.eval_every = c.checkpoint_every = c.num_steps  # one segment, one eval
  c.progress_bar = False
  validation.validate_config(c)
  return c


def run_row(results: pathlib.Path, scratch: pathlib.Path, profile_name: str, row: Row,
            tfds_data_dir: str = "", verbose: bool = True) -> list[dict]:
  """Trains one row's unrecorded seeds (vmapped), attacks each window, appends the records.

  The state where a window starts comes from a run trained to that step in a workdir of
  its own (training is deterministic and the schedules constant, so each is the same run
  stopped earlier; own workdirs make every segment resumable by itself). The window
  continues the run for `window_steps` steps with its own step (`record_window`), so the
  last window holds the run's real last steps and ends at num_steps, where the accuracy
  is measured. Each window's scores are kept in the row's scratch directory as soon as
  they exist, so an interrupted row resumes at its first unscored window. FedAvg's row
  trains to num_steps and is attacked there.

  Returns:
    The new records.
  """
  profile = PROFILES[profile_name]
  check_profile(profile_name)
  out = records.ResultsFile(results)
  fedavg = row.orientation == "fedavg"
  # The attacker-tuning records live beside the study's (`attacker_tuning` writes them).
  budget = (fedavg_budget(records.ResultsFile(results.parent / attacker_choice.RESULTS_NAME)
                          .load(), profile_name) if fedavg else None)
  setting = attacker_choice.setting_name(budget) if fedavg else None
  done = {(r["row"], r["seed"]) for r in out.load()
          if r["profile"] == profile_name and is_current(r, {profile_name: setting}
                                                         if fedavg else None)}
  seeds = [s for s in profile.seeds if (row.name, s) not in done]
  if not seeds:
    return []
  start = time.perf_counter()
  # FedAvg's scores depend on the attacker's setting: a cell of their own per setting.
  suffix = f"_{INVERSION_ATTACK}_{setting.replace(' ', '_')}" if fedavg else ""
  cell = (scratch / profile_name / (row.name.replace("/", "_") + suffix)
          / f"seeds={','.join(map(str, seeds))}")
  partial_path = cell / "windows.json"
  partial = json.loads(partial_path.read_text()) if partial_path.exists() else {}
  last = profile.windows[-1]
  recon_at = reconstruction_windows(row, profile.windows)
  per_client = "label_auc_clients" in required_scores(row, last, profile.windows)
  for t in profile.windows:
    needed = required_scores(row, t, profile.windows)
    if str(t) in partial and all(v.get("diverged") or all(k in v for k in needed)
                                 for v in partial[str(t)].values()):
      continue
    if fedavg and t != last:  # no split messages: FedAvg is attacked at the end only
      partial[str(t)] = {str(s): {"label_auc": None, "input_dcor": None} for s in seeds}
      continue
    until = profile.num_steps if fedavg else t
    config = make_config(profile, row, tfds_data_dir, num_steps=max(until, 1))
    accuracy = {}
    if until == 0:  # before training: the initial state
      states = {s: _initial_state(config, s) for s in seeds}
    else:
      trained = seed_batch.train_seeds(config, seeds, [cell / f"to={until}" / f"seed={s}"
                                                       for s in seeds],
                                       allow_single=True, group_dir=cell / f"to={until}",
                                       record_divergence=True)
      # A diverged seed keeps no state: it is recorded as diverged, with no scores.
      states = {s: None if r.diverged else r.state for s, r in zip(seeds, trained)}
      accuracy = {s: r.eval_metrics.get("test/accuracy_mean") for s, r in zip(seeds, trained)}
    scores = {}
    for s in seeds:
      if states[s] is None:
        scores[str(s)] = {"label_auc": None, "input_dcor": None, "accuracy": None,
                          "diverged": True}
        continue
      seed_config = seed_batch.seed_configs(config, [s])[0]
      federation = data.build_federation(seed_config.data, s)
      if fedavg:
        scores[str(s)] = dict(_fedavg_attack(seed_config, states[s], federation, profile,
                                             budget), accuracy=accuracy[s])
        continue
      record = (messages.record_splitfed_window if row.orientation == "splitfed_v2"
                else messages.record_window)
      window, after = record(seed_config, states[s], federation, profile.window_steps)
      scores[str(s)] = attacks.attack_all(window, per_client=per_client)
      if t == last:  # the end of training: the accuracy
        scores[str(s)]["accuracy"] = _accuracy(seed_config, after, federation)
      if t in recon_at:  # the costly attack
        recon = reconstruction.attack_client(seed_config, states[s], federation, window,
                                             budget=profile.attack_budget) or {}
        scores[str(s)].update({f"recon_{k}": recon.get(k) for k in
                               ("psnr", "ssim", "classifier_accuracy")})
    partial[str(t)] = scores
    cell.mkdir(parents=True, exist_ok=True)
    partial_path.write_text(json.dumps(partial))
  new = []
  for s in seeds:
    windows = {t: dict(partial[t][str(s)]) for t in map(str, profile.windows)}
    accuracy = windows[str(last)].pop("accuracy", None)
    diverged = any(w.pop("diverged", False) for w in windows.values())
    new.append({"profile": profile_name, "row": row.name, "orientation": row.orientation,
                "defence": row.defence, "strength": row.strength, "seed": s,
                "num_steps": profile.num_steps, "window_steps": profile.window_steps,
                "accuracy": accuracy, "diverged": diverged, "attacks": windows,
                "reductions": list(profile.reductions),
                "where": v2_runner.where_computed(len(seeds)),
                **({"attack": INVERSION_ATTACK, "inversion_setting": setting}
                   if fedavg else {})})
  out.append(new)
  if verbose:
    print(f"[privacy] {row.name} seeds={seeds}: acc "
          + " ".join("diverged" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
                     for r in new) + " | end "
          + str(new[0]["attacks"][str(last)])
          + f" ({time.perf_counter() - start:.0f} s)", flush=True)
  return new


def check_profile(profile_name: str) -> None:
  """Refuses a profile whose windows do not end training (ValueError, one line)."""
  profile = PROFILES[profile_name]
  ends = profile.windows[-1] + profile.window_steps
  if list(profile.windows) != sorted(set(profile.windows)) or ends != profile.num_steps:
    raise ValueError(f"profile {profile_name!r}: windows must increase and the last must "
                     f"end training (last + window_steps = {profile.num_steps}); got "
                     f"{profile.windows} + {profile.window_steps}")


def _accuracy(config, state, federation: data.Federation) -> float:
  """The mean per-task test accuracy of a state (as the training loop evaluates it)."""
  key = (config.data.to_json(sort_keys=True), config.seed)
  _, algorithm = train.prepare_run(config, {key: federation})
  _, test = data.to_host(federation)
  evaluate, _ = evaluation.evaluator(algorithm, jax.eval_shape(algorithm.init_state), test,
                                     config.eval_batch_size)
  raw = jax.device_get(evaluate(state))
  return evaluation.summarize(raw, federation.test_counts)["test/accuracy_mean"]


def _fedavg_attack(config, state, federation, profile: Profile,
                   budget: gradient_inversion.InversionBudget) -> dict:
  """FedAvg's row: gradient inversion of client 0's FedSGD update at the global model.

  The server inverts the gradient of INVERTED_BATCH of client 0's training examples at
  the model it sent (`gradient_inversion`, INVERSION_ATTACK, with `budget`); scored like the
  reconstruction attack, with the same fixed classifier trained on the other clients'
  test examples, plus the fraction of the batch's labels it restored.
  """
  model = local_training.make_full_model(config.model, int(federation.num_classes.max()))
  x = jax.numpy.asarray(federation.train_x[0][:INVERTED_BATCH])
  y = jax.numpy.asarray(federation.train_y[0][:INVERTED_BATCH])
  classify = reconstruction.fixed_classifier(federation, 0, profile.attack_budget)
  (scores,) = gradient_inversion.attack_batches(
      model.apply, state.server.params, x[None], y[None], int(federation.num_classes[0]),
      budget, classify)
  return {"label_auc": None, "input_dcor": None,
          **{f"recon_{name}": value for name, value in scores.items()}}


def _initial_state(config, seed):
  """A run's state at step 0 (what its first window attacks)."""
  _, algorithm = train.prepare_run(seed_batch.seed_configs(config, [seed])[0])
  return jax.jit(algorithm.init_state)()


def run_profile(results: pathlib.Path, scratch: pathlib.Path, profile_name: str,
                tfds_data_dir: str = "", verbose: bool = True) -> None:
  """Runs every row of a profile that is not recorded yet."""
  for row in rows():
    run_row(results, scratch, profile_name, row, tfds_data_dir, verbose)
