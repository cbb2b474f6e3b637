"""The gradient-inversion attacker's tuning: its grid and walk (hand-made records with
known answers), its batched attack (equal to one inversion per batch), its records and
resume, the FedAvg row's use of the chosen setting, and the report."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import config_base
from mtsl_jax.algorithms import local_training
from mtsl_jax.comparison import records
from mtsl_jax.privacy import (attacker_choice, attacker_tuning, gradient_inversion, report,
                              tradeoff)

BASE = gradient_inversion.InversionBudget(iterations=2000, learning_rate=0.03, tv_weight=0.01)


def test_the_grid_varies_one_axis_at_a_time_around_its_centre():
  grid = [(b.learning_rate, b.tv_weight, b.iterations)
          for b in attacker_choice.candidates(BASE)]
  assert grid == [(0.03, 0.01, 2000), (0.01, 0.01, 2000), (0.09, 0.01, 2000),
                  (0.03, 0.00333, 2000), (0.03, 0.03, 2000), (0.03, 0.01, 1000),
                  (0.03, 0.01, 4000)]
  # A centre one step down the TV axis: its step back up lands on the start's 0.01 exactly.
  centre = attacker_choice.candidates(BASE)[3]
  tvs = [b.tv_weight for b in attacker_choice.candidates(centre, BASE)]
  assert tvs == [0.00333, 0.00333, 0.00333, 0.00111, 0.01, 0.00333, 0.00333]


def _records(psnr_of, batches=3, profile="cpu"):
  """Records of every setting in `psnr_of` (budget -> PSNR per batch)."""
  recs = []
  for budget, values in psnr_of.items():
    recs += [{"profile": profile, "setting": attacker_choice.setting_name(budget),
              "budget": {"iterations": budget.iterations,
                         "learning_rate": budget.learning_rate,
                         "tv_weight": budget.tv_weight, "restarts": budget.restarts,
                         "seed": 0},
              "batch": i, "scores": {"psnr": v, "ssim": 0.5, "classifier_accuracy": 1.0,
                                     "label_accuracy": 1.0}}
             for i, v in enumerate(values[:batches])]
  return recs


def test_the_walk_moves_to_the_best_setting_until_its_centre_is_best():
  """Round 1: TV / 3 scores 25 dB, the centre 22: the walk moves there. Round 2 around it
  is complete and its centre is best: chosen, interior."""
  round1 = attacker_choice.candidates(BASE)
  psnr = {b: [20.0, 20.0, 20.0] for b in round1}
  psnr[BASE] = [20.0, 22.0, 24.0]
  psnr[round1[3]] = [25.0, 25.0, 25.0]
  state = attacker_choice.walk(attacker_choice.summarize(_records(psnr))["cpu"], BASE)
  assert state.chosen is None and state.centres == (BASE, round1[3])
  assert set(state.missing) == set(attacker_choice.candidates(round1[3], BASE)) - set(round1)
  for b in attacker_choice.candidates(round1[3], BASE):
    psnr.setdefault(b, [21.0, 21.0, 21.0])
  recs = _records(psnr)
  assert attacker_choice.chosen(recs, "cpu", BASE) == round1[3]
  text = "\n".join(report._attacker_section(recs))  # pylint: disable=protected-access
  assert "| rate=0.03 tv=0.01 iterations=2000 restarts=2 | 3 | 22.00 ± 4.97 (sd 2.00) |" \
      in text   # mean 22, sd 2, t(2) half-width 4.303 x 2 / sqrt(3) = 4.97
  assert "| rate=0.03 tv=0.00333 iterations=2000 restarts=2 ★ | 3 | 25.00 (sd 0.00) |" in text
  assert "the best of its round: interior on every axis." in text
  # Against the start, batch by batch: 25 - (20, 22, 24) = 5, 3, 1: mean 3, sd 2.
  assert ("paired over 3 batches): not significant +3.00 [-1.97, 7.97] (sd 2.00) "
          "p=0.12") in text  # t = 3 / (2 / sqrt 3) = 2.60, 2 df


def test_a_setting_with_fewer_batches_than_the_others_is_not_recorded_yet():
  psnr = {b: [20.0, 20.0, 20.0] for b in attacker_choice.candidates(BASE)}
  recs = _records(psnr)
  recs = [r for r in recs if not (r["setting"] == attacker_choice.setting_name(BASE)
                                  and r["batch"] == 2)]
  state = attacker_choice.walk(attacker_choice.summarize(recs)["cpu"], BASE)
  assert state.missing == (BASE,) and state.chosen is None


def test_batched_inversion_equals_one_inversion_per_batch():
  """Two batches of 2 examples, vmapped, against `invert` on each alone."""
  config = config_base.base_config()
  config.model.name, config.model.hidden_sizes = "mlp", (16,)
  model = local_training.make_full_model(config.model, 3)
  params = local_training.init_model(model, jax.random.PRNGKey(0), (6,))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 2, 6)), jnp.float32)
  y = jnp.asarray([[0, 2], [1, 1]])
  budget = gradient_inversion.InversionBudget(iterations=200, learning_rate=0.05,
                                              tv_weight=0.0)
  got = gradient_inversion.attack_batches(model.apply, params, x, y, 3, budget,
                                          lambda r: jnp.zeros(len(r), jnp.int32))
  for b in range(2):
    target = gradient_inversion.client_gradient(model.apply, params, x[b], y[b], 3)
    guess, labels = gradient_inversion.invert(model.apply, params, target, (6,), 2, 3,
                                              budget)
    paired = gradient_inversion.pair_up(np.asarray(x[b]), np.asarray(guess))
    mse = np.mean((np.asarray(x[b], np.float64) - paired) ** 2, axis=1)
    # PSNR of a feature vector, as `reconstruction.score`: the batch's data range.
    span = float(x[b].max() - x[b].min())
    assert got[b]["psnr"] == pytest.approx(np.mean(10 * np.log10(span ** 2 / mse)), rel=1e-3)
    assert got[b]["label_accuracy"] == gradient_inversion.label_accuracy(
        np.asarray(y[b]), np.asarray(labels))
    assert got[b]["classifier_accuracy"] == float(np.mean(np.asarray(y[b]) == 0))


def test_tuning_records_each_setting_and_batch_once_and_fedavg_uses_the_choice(
    tmp_path, monkeypatch):
  """One round on the embedded data (the walk's limit set to 1 to keep it short)."""
  monkeypatch.setattr(attacker_choice, "MAX_ROUNDS", 1)
  results = tmp_path / attacker_choice.RESULTS_NAME
  chosen = attacker_tuning.tune(results, tmp_path / "scratch", "test", verbose=False)
  recs = records.ResultsFile(results).load()
  batches = {r["batch"] for r in recs}
  assert len(batches) >= 2 and len(recs) == 7 * len(batches)
  assert len({(r["setting"], r["batch"]) for r in recs}) == len(recs)
  assert all(r["batch_size"] == tradeoff.INVERTED_BATCH and r["where"]["backend"] == "cpu"
             for r in recs)
  summary = attacker_choice.summarize(recs)["test"]
  assert attacker_choice.setting_name(chosen) == attacker_choice.best(summary)
  assert attacker_tuning.tune(results, tmp_path / "scratch", "test", verbose=False) == chosen
  assert len(records.ResultsFile(results).load()) == len(recs)   # nothing run again
  assert tradeoff.fedavg_budget(recs, "test") == chosen
  # A FedAvg record scored at another setting is superseded; one at the choice counts.
  name = attacker_choice.setting_name(chosen)
  rec = {"profile": "test", "orientation": "fedavg", "attack": tradeoff.INVERSION_ATTACK}
  assert tradeoff.is_current(dict(rec, inversion_setting=name), {"test": name})
  assert not tradeoff.is_current(dict(rec, inversion_setting="rate=1 tv=0 iterations=1 "
                                      "restarts=1"), {"test": name})
  # Records from before the field ran at the profile's budget.
  default = attacker_choice.setting_name(tradeoff.PROFILES["test"].inversion_budget)
  assert tradeoff.is_current(rec, {"test": default})


def test_the_document_carries_the_attackers_section(tmp_path):
  results = tmp_path / "runs.jsonl"
  records.ResultsFile(results).append([])
  psnr = {b: [20.0, 20.0, 20.0] for b in attacker_choice.candidates(BASE)}
  psnr[BASE] = [26.0, 26.0, 26.0]
  records.ResultsFile(tmp_path / attacker_choice.RESULTS_NAME).append(_records(psnr))
  document = tmp_path / "privacy.md"
  report.write_report(results, document)
  text = document.read_text()
  assert "## The gradient-inversion attacker's settings" in text
  assert "| rate=0.03 tv=0.01 iterations=2000 restarts=2 ★ | 3 | 26.00 (sd 0.00) |" in text
