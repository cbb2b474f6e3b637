"""Runs the gradient-inversion attacker's tuning (the rule: `attacker_choice`).

FedAvg's reference row (`tradeoff`) inverts client 0's FedSGD update; the attack's
optimization is tuned on data the study does not score:

  * the model: the profile's FedAvg run, seed SEED, at the end of training (trained again
    in a workdir of its own under the scratch directory; resumable);
  * the batches: up to TUNING_BATCHES batches of `tradeoff.INVERTED_BATCH` of client 0's
    training examples that follow the batch the study attacks (examples INVERTED_BATCH
    onwards), so the scored batch is never tuned on;
  * the settings: the rounds of `attacker_choice.walk`, each scored on every batch in one
    compiled program (`gradient_inversion.attack_batches`).

One record per (setting, batch) is appended to results/privacy/attacker_tuning.jsonl; a
rerun computes only what is missing.
"""

import dataclasses
import pathlib
import time

import jax.numpy as jnp

from mtsl_jax import data, seed_batch
from mtsl_jax.algorithms import local_training
from mtsl_jax.comparison import records, v2_runner
from mtsl_jax.privacy import attacker_choice, gradient_inversion, reconstruction, tradeoff

TUNING_BATCHES = attacker_choice.TUNING_BATCHES
SEED = attacker_choice.TUNING_SEED


def tune(results: pathlib.Path, scratch: pathlib.Path, profile_name: str,
         tfds_data_dir: str = "", verbose: bool = True) -> gradient_inversion.InversionBudget:
  """Runs the rounds of a profile's tuning that are not recorded yet.

  Args:
    results: the attacker-tuning records (JSONL, appended).
    scratch: where the FedAvg model is trained (scratch/<profile>/attacker_tuning).
    profile_name: a `tradeoff.PROFILES` key.
    tfds_data_dir: TFDS data_dir ('' = TFDS's default).
    verbose: print a line per setting and the choice.

  Returns:
    The chosen setting (`attacker_choice.chosen`).

  Raises:
    ValueError: client 0 holds too few training examples for two tuning batches.
    RuntimeError: the FedAvg run diverged.
  """
  profile = tradeoff.PROFILES[profile_name]
  out = records.ResultsFile(results)
  prepared = None
  while True:
    recs = [r for r in out.load() if r["profile"] == profile_name]
    state = attacker_choice.walk(attacker_choice.summarize(recs).get(profile_name, {}),
                                 profile.inversion_budget)
    if state.chosen is not None:
      if verbose:
        print(f"[attacker] {profile_name}: chosen {attacker_choice.setting_name(state.chosen)}"
              f" after {len(state.centres)} round(s)", flush=True)
      return state.chosen
    prepared = prepared or _prepare(scratch, profile_name, tfds_data_dir)
    done = {(r["setting"], r["batch"]) for r in recs}
    for budget in state.missing:
      name = attacker_choice.setting_name(budget)
      start = time.perf_counter()
      scores = gradient_inversion.attack_batches(budget=budget, **prepared)
      new = [{"profile": profile_name, "setting": name, "budget": dataclasses.asdict(budget),
              "batch": i, "seed": SEED, "batch_size": tradeoff.INVERTED_BATCH,
              "scores": s, "where": v2_runner.where_computed(1)}
             for i, s in enumerate(scores) if (name, i) not in done]
      out.append(new)
      if verbose:
        mean_psnr = sum(s["psnr"] for s in scores) / len(scores)
        print(f"[attacker] {profile_name} {name}: mean PSNR {mean_psnr:.2f} dB over "
              f"{len(scores)} batches ({time.perf_counter() - start:.0f} s)", flush=True)


def _prepare(scratch: pathlib.Path, profile_name: str, tfds_data_dir: str) -> dict:
  """The trained FedAvg model and the tuning batches: the arguments of
  `gradient_inversion.attack_batches` but the budget (x [batches, n, ...], y [batches, n])."""
  profile = tradeoff.PROFILES[profile_name]
  config = tradeoff.make_config(profile, tradeoff.Row("fedavg", "none", 0.0), tfds_data_dir)
  seed_config = seed_batch.seed_configs(config, [SEED])[0]
  federation = data.build_federation(seed_config.data, SEED)
  size = tradeoff.INVERTED_BATCH
  batches = min(TUNING_BATCHES, len(federation.train_x[0]) // size - 1)
  if batches < 2:
    raise ValueError(f"profile {profile_name!r}: client 0 holds "
                     f"{len(federation.train_x[0])} training examples; the attacker's "
                     f"tuning needs at least {3 * size}")
  workdir = scratch / profile_name / "attacker_tuning" / f"seed={SEED}"
  (trained,) = seed_batch.train_seeds(config, [SEED], [workdir], allow_single=True,
                                      group_dir=workdir.parent / "group")
  if trained.diverged:
    raise RuntimeError(f"profile {profile_name!r}: the FedAvg run the attacker is tuned "
                       f"on diverged: {trained.diverged.splitlines()[0]}")
  # The study attacks examples [0, size); the tuning batches are the ones after them.
  x = jnp.asarray(federation.train_x[0][size:size * (batches + 1)])
  y = jnp.asarray(federation.train_y[0][size:size * (batches + 1)])
  model = local_training.make_full_model(seed_config.model,
                                         int(federation.num_classes.max()))
  classify = reconstruction.fixed_classifier(federation, 0, profile.attack_budget)
  return {"apply": model.apply, "params": trained.state.server.params,
          "x": x.reshape((batches, size) + x.shape[1:]), "y": y.reshape((batches, size)),
          "num_classes": int(federation.num_classes[0]), "classify": classify}
