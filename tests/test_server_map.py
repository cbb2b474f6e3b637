"""The server map ("when does the shared server part help"): grid, analysis, report, pipeline."""

import dataclasses
import math
import re

import numpy as np
import pytest

from mtsl_jax import validation
from mtsl_jax.comparison import records, v2_grid
from mtsl_jax.server_map import analysis, answer, grid, report, runner


# ---- the grid ----------------------------------------------------------------------------


def test_every_cell_of_every_profile_builds_a_valid_config():
  for name, profile in grid.PROFILES.items():
    for dataset in profile.datasets:
      for setting in profile.settings:
        for examples, clients in grid.regimes(profile, dataset):
          for method in profile.methods:
            c = grid.make_config(dataset, setting, method, 0.1, 0.1, examples=examples,
                                 clients=clients, tune=False,
                                 client_steps=profile.max_client_steps, evals=grid.EVALS)
            assert c.data.num_clients == clients and c.data.validation_fraction == 0
            per = grid.client_steps_per_step(method)
            assert c.num_steps * per <= profile.max_client_steps, (name, method)
        for cut in profile.ablation_cuts:
          for ablation in grid.ABLATIONS:
            grid.make_config(dataset, setting, f"mtsl_{cut}+{ablation}", 0.1, 0.1,
                             examples=0, clients=profile.clients[0], tune=False,
                             client_steps=profile.max_client_steps, evals=grid.EVALS)
    # Every ablation cell is a map cell, so its MTSL row is there to compare with.
    for regime in profile.ablation_regimes:
      assert all(regime in grid.regimes(profile, d) for d in profile.datasets), name


def test_the_cpu_map_of_mnist_has_12_cells_and_skips_caps_the_data_cannot_fill():
  cells = grid.regimes(grid.PROFILES["cpu"], "mnist")
  assert len(cells) == 12
  assert (1600, 50) not in cells and (400, 200) not in cells  # 80,000 > 60,000 examples
  assert (1600, 10) in cells and (100, 200) in cells and (0, 200) in cells


def test_tuning_runs_hold_out_validation_and_centralized_trains_with_its_one_rate():
  c = grid.make_config("mnist", "dirichlet_0.3", "centralized", 1.0, 0.03, examples=400,
                       clients=10, tune=True, client_steps=150, evals=5)
  assert c.server_optimizer.learning_rate == 0.03  # not the placeholder server rate
  assert c.data.evaluate_on == "validation" and c.data.validation_fraction > 0
  assert c.data.max_examples_per_client == 400


def test_bad_names_are_refused_with_the_field():
  cases = [(dict(dataset="cifar100"), "dataset"), (dict(setting="dirichlet_9"), "setting"),
           (dict(method="fedprox"), "method"), (dict(method="local+frozen_server"), "method"),
           (dict(method="mtsl_head+frozen"), "method")]
  for change, field in cases:
    args = {"dataset": "mnist", "setting": "dirichlet_0.3", "method": "mtsl_head", **change}
    with pytest.raises(validation.ConfigError, match=field):
      grid.make_config(args["dataset"], args["setting"], args["method"], 0.1, 0.1,
                       examples=25, clients=10, tune=False, client_steps=300, evals=20)


def test_merging_device_records_keeps_every_map_cell_apart():
  from mtsl_jax.comparison import merge_records  # pylint: disable=import-outside-toplevel
  assert set(runner.KEY_FIELDS) <= set(merge_records.KEY_FIELDS)


def test_the_cuts_span_one_to_nearly_ninety_percent_of_the_parameters():
  table = analysis.cut_table("cpu", "mnist")
  shares = {name: c.client_param_share for name, c in table.items()}
  # MLP 784-100-100-10: 78,500 + 10,100 + 1,010 parameters.
  assert shares["head"] == pytest.approx(1010 / 89610)
  assert shares["top2"] == pytest.approx(11110 / 89610)
  assert shares["bottom"] == pytest.approx(78500 / 89610)
  assert shares["u_shaped"] == pytest.approx(79510 / 89610)
  # The CNN slice: conv 5x5x1x16 (416) of 416 + 12,832 + 200,832 + 1,290 parameters.
  cnn = analysis.cut_table("cnn", "mnist")["bottom"]
  assert cnn.client_param_share == pytest.approx(416 / 215370)
  assert analysis.model_text("cnn", "mnist") == "CNN conv5x5 16 + conv5x5 32, dense 128, head"
  # Only the cuts a profile runs: the CNN slice has no 'top2' row.
  assert set(analysis.cut_table("cpu_cnn", "mnist")) == {"head", "bottom", "u_shaped"}


# ---- the analysis on hand-made records ---------------------------------------------------


def _record(method, seed, accuracy, examples=25, clients=10, setting="dirichlet_0.3",
            phase="map"):
  curve = [accuracy - 0.1, accuracy - 0.01, accuracy, accuracy, accuracy]
  return {"phase": phase, "profile": "cpu", "dataset": "mnist", "setting": setting,
          "examples": examples, "clients": clients, "method": method, "server_lr": 0.1,
          "client_lr": 0.1, "seed": seed, "eval_every": 10, "num_steps": 50,
          "client_steps_per_step": 1, "diverged": None,
          "train_examples": {"mean": 25.0, "min": 25, "max": 25},
          "curve": {"client_steps": [10, 20, 30, 40, 50], "accuracy_mean": curve,
                    "accuracy_worst": curve, "bytes": [0.0] * 5},
          "final": {"accuracy_mean": accuracy, "accuracy_worst": accuracy,
                    "accuracy_weighted": accuracy, "accuracy": [accuracy], "bytes": 0.0}}


def _hand_made():
  """Three seeds. At (25, 10) mtsl_head beats local by 0.05 +- 0.01 and FedRep by 0.01
  +- 0.02 (not significant); at (100, 10) it loses to FedAvg by 0.04 +- 0.01. The frozen
  server costs 0.10 at (25, 10)."""
  recs = []
  noise = [0.0, 0.01, -0.01]
  for s in range(3):
    recs += [_record("local", s, 0.80 + noise[s]),
             _record("fedavg", s, 0.70),
             _record("fedrep", s, 0.84 + noise[s] - [0.0, 0.02, -0.02][s]),
             _record("mtsl_head", s, 0.85 + noise[s] + [0.0, 0.01, -0.01][s]),
             _record("mtsl_head+frozen_server", s, 0.75 + noise[s], phase="ablations"),
             _record("local", s, 0.80, examples=100),
             _record("fedavg", s, 0.90 + noise[s], examples=100),
             _record("fedrep", s, 0.80, examples=100),
             _record("mtsl_head", s, 0.86 + noise[s] + [0.0, 0.01, -0.01][s], examples=100)]
  return recs


def test_differences_pick_the_stronger_baseline_and_give_paired_verdicts():
  diffs = analysis.differences(analysis.summaries(_hand_made()))
  best = diffs[("cpu", "mnist", "dirichlet_0.3", "mtsl_head", "best of local and FedAvg")]
  assert best[(25, 10)]["baseline"] == "local"
  assert best[(25, 10)]["mean"] == pytest.approx(0.05)
  # Per-seed differences 0.05, 0.06, 0.04: mean 0.05, std 0.01, t(2) = 4.303.
  assert best[(25, 10)]["high"] - 0.05 == pytest.approx(4.302653 * 0.01 / math.sqrt(3))
  assert best[(25, 10)]["verdict"] == "holds"
  assert best[(100, 10)]["baseline"] == "fedavg"
  assert best[(100, 10)]["mean"] == pytest.approx(-0.04)
  assert best[(100, 10)]["verdict"] == "fails"
  fedrep = diffs[("cpu", "mnist", "dirichlet_0.3", "mtsl_head", "FedRep")]
  assert fedrep[(25, 10)]["mean"] == pytest.approx(0.01)
  assert fedrep[(25, 10)]["verdict"] == "not significant"  # differences 0.01, 0.04, -0.02
  assert analysis.tally(best) == {"holds": 1, "not significant": 0, "fails": 1}


def test_a_verdict_against_a_side_still_rising_is_budget_bound():
  bound = analysis.budget_bound
  # A win stands while the beaten baseline had plateaued, whatever MTSL did.
  assert not bound("holds", ("MTSL",)) and bound("holds", ("local",))
  # A loss stands while MTSL had plateaued.
  assert not bound("fails", ("fedavg",)) and bound("fails", ("MTSL", "fedavg"))
  # A tie stands only if neither side was rising.
  assert not bound("not significant", ()) and bound("not significant", ("fedrep",))
  # At (25, 10) local-only is still rising at the end of its budget (its last 20% of
  # evaluations gained 5 points): the MTSL win over it is budget-bound, while the win
  # at the same cell over FedRep (plateaued) is not.
  recs = [dict(r, curve=dict(r["curve"], accuracy_mean=[
      r["final"]["accuracy_mean"] - d for d in (0.3, 0.2, 0.1, 0.05, 0.0)]))
          if r["method"] == "local" and r["examples"] == 25 else r for r in _hand_made()]
  diffs = analysis.differences(analysis.summaries(recs))
  best = diffs[("cpu", "mnist", "dirichlet_0.3", "mtsl_head", "best of local and FedAvg")]
  assert best[(25, 10)]["rising"] == ("local",) and best[(25, 10)]["budget_bound"]
  assert best[(100, 10)]["rising"] == () and not best[(100, 10)]["budget_bound"]
  fedrep = diffs[("cpu", "mnist", "dirichlet_0.3", "mtsl_head", "FedRep")][(25, 10)]
  assert fedrep["rising"] == () and not fedrep["budget_bound"]


def test_the_tuned_once_check_pairs_each_cell_with_its_cell_tuned_runs(tmp_path):
  """At (25, 10) every method is tuned again at the cell; local-only, at its cell-tuned
  point, gains 6 points (0.86 on every seed's noise): mtsl_head's win over it (+5)
  becomes a tie (-1, 0, -2: t = -1.73), while the FedRep verdict is unchanged."""
  recs = _hand_made()
  at_cell = ("local", "fedavg", "fedrep", "mtsl_head")
  recs += [dict(_record(m, 0, 0.9), phase="tune_cell") for m in at_cell]
  recs += [dict(r, phase="retuned", final=dict(r["final"], accuracy_mean=r["final"][
      "accuracy_mean"] + (0.06 if r["method"] == "local" else 0.0)))
           for r in _hand_made() if r["examples"] == 25 and r["method"] in at_cell]
  check = analysis.tuning_check(analysis.summaries(recs),
                                analysis.summaries(recs, retuned=True))
  local = check["methods"][("cpu", "mnist", "dirichlet_0.3", 25, 10, "local")]
  assert local["change"]["mean"] == pytest.approx(0.06)
  assert local["change"]["verdict"] == "holds"
  best = check["verdicts"][("cpu", "mnist", "dirichlet_0.3", "mtsl_head",
                            "best of local and FedAvg", (25, 10))]
  assert (best["once"]["verdict"], best["cell"]["verdict"], best["same"]) == (
      "holds", "not significant", False)
  assert best["cell"]["mean"] == pytest.approx(-0.01)
  fedrep = check["verdicts"][("cpu", "mnist", "dirichlet_0.3", "mtsl_head", "FedRep",
                              (25, 10))]
  assert fedrep["same"]
  assert len(check["verdicts"]) == 2  # only the re-tuned cell is checked
  results = tmp_path / "runs.jsonl"
  records.ResultsFile(results).append(recs)
  document = tmp_path / "when.md"
  report.write_report(results, document)
  text = document.read_text()
  assert ("**1 of 2 verdicts are the same with cell-tuned rates**; changed: mnist / "
          "dirichlet_0.3 (cpu), 25 examples x 10 clients, mtsl_head vs best of local and "
          "FedAvg: holds -> not significant.") in text
  assert "Checked in 1 map cell by tuning every method there again" in text
  assert ("test accuracy rose significantly in 1 of 4 cases, fell in 0 and did not change "
          "significantly in 3") in text
  assert "(validation examples over all clients, 25 examples x 10 clients: about 25)" in text
  assert "4 tuning runs at its cells and 12 runs at the points they chose" in text


def test_a_cell_keeps_only_runs_at_its_methods_tuned_point():
  recs = _hand_made()
  # Tuning chose (0.1, 0.1) for mtsl_head; a stale run of seed 0 at another point is left
  # out, even though it was written last.
  recs.append(dict(_record("mtsl_head", 0, 0.99), server_lr=0.3, client_lr=0.3))
  recs += [dict(_record("mtsl_head", 0, acc), phase="tune", server_lr=lr, client_lr=lr)
           for lr, acc in ((0.1, 0.9), (0.3, 0.5))]
  cell = analysis.cells(recs)[("cpu", "mnist", "dirichlet_0.3", 25, 10, "mtsl_head")]
  assert [(r["seed"], r["final"]["accuracy_mean"]) for r in cell] == [
      (0, 0.85), (1, pytest.approx(0.87)), (2, pytest.approx(0.83))]


def test_ablations_are_paired_with_their_mtsl_row_at_the_same_cell():
  abl = analysis.ablations(analysis.summaries(_hand_made()))
  frozen = abl[("cpu", "mnist", "dirichlet_0.3", 25, 10, "mtsl_head")]["frozen_server"]
  assert frozen["mean"] == pytest.approx(-0.10) and frozen["verdict"] == "fails"
  assert frozen["n"] == 3


def test_an_ablated_seed_that_diverged_is_left_out_and_said_in_the_table(tmp_path):
  """Seed 2 of the data-size rates diverges: the paired test runs on seeds 0 and 1
  (-0.10 and -0.11), and the table's cell says the third seed diverged."""
  recs = _hand_made()
  recs += [_record("mtsl_head+data_size_rates", s, acc, phase="ablations")
           for s, acc in ((0, 0.75), (1, 0.76))]
  recs.append(dict(_record("mtsl_head+data_size_rates", 2, 0.0, phase="ablations"),
                   diverged="non-finite values at step 14", curve=None, final=None))
  cell = analysis.ablations(analysis.summaries(recs))[
      ("cpu", "mnist", "dirichlet_0.3", 25, 10, "mtsl_head")]["data_size_rates"]
  assert cell["n"] == 2 and cell["diverged"] == 1
  assert cell["mean"] == pytest.approx(-0.105)
  results = tmp_path / "runs.jsonl"
  records.ResultsFile(results).append(recs)
  document = tmp_path / "when.md"
  report.write_report(results, document)
  (row,) = [line for line in document.read_text().splitlines()
            if line.startswith("| mnist / dirichlet_0.3 (cpu) | 25 examples x 10 clients |")]
  assert row.endswith("n=2; 1 seed(s) diverged, left out |")


def test_an_ablation_that_changed_nothing_is_said_and_counted_apart(tmp_path):
  """Every client holds 25 examples, so data-size weights are uniform: the ablated runs
  equal the MTSL row on every seed; the table says so and the summary does not count the
  cell as 'not significant' evidence."""
  recs = _hand_made()
  recs += [dict(r, method="mtsl_head+data_size_weights", phase="ablations")
           for r in _hand_made() if r["method"] == "mtsl_head" and r["examples"] == 25]
  cell = analysis.ablations(analysis.summaries(recs))[
      ("cpu", "mnist", "dirichlet_0.3", 25, 10, "mtsl_head")]
  assert cell["data_size_weights"]["identical"] and not cell["frozen_server"]["identical"]
  results = tmp_path / "runs.jsonl"
  records.ResultsFile(results).append(recs)
  document = tmp_path / "when.md"
  report.write_report(results, document)
  text = document.read_text()
  assert ("| no change: the MTSL row's run (every client holds the same examples) n=3 |"
          in text)
  assert ("- task weights n_m / sum n instead of uniform:\n"
          "  - mtsl_head (cpu): 0 cells significantly worse, 0 not significant, 0 better (no "
          "difference measured); in 1 more it changed nothing (every client holds the same "
          "examples); no cell run could show its effect.") in text


def test_the_document_states_the_answer_the_records_give(tmp_path):
  results = tmp_path / "runs.jsonl"
  records.ResultsFile(results).append(_hand_made())
  document = tmp_path / "docs" / "when.md"
  report.write_report(results, document)
  text = document.read_text()
  row = next(line for line in text.splitlines()
             if line.startswith("| mnist / dirichlet_0.3 (cpu) | mtsl_head |"))
  assert "| 1 / 0 / 1 | 1 / 1 / 0 | none |" in row  # vs best-of; vs FedRep
  assert "better than the better of local-only and FedAvg in 1 of 2 cells: 25 examples x " \
         "10 clients" in text
  assert ("- server part frozen at its initialisation (random features):\n"
          "  - mtsl_head (cpu): 1 cell significantly worse, 0 not significant, 0 better "
          "(difference -10.0 points)") in text
  assert "the learned shared server part carries accuracy" in text
  assert ("1.1% of the parameters on the client: 1 / 0 / 1 of 2 cells (FedRep: 1 / 1 / 0); "
          "budget-bound of those: 0 / 0 / 0;") in text
  assert "Budget-bound (the side a verdict goes against was still rising" in text
  assert (document.parent / "figures" / "server_map").is_dir()
  report.write_report(results, document)
  assert document.read_text() == text  # regenerated identically


def test_seeds_are_counted_per_cell_from_the_records_not_from_a_records_reductions(tmp_path):
  """The profile grew from 3 seeds to 5 and one cell has its two new seeds: the document
  counts 5 in 1 cell and 3 in the other 8, and drops the stale '3 seeds, not 5' line the
  older records carry."""
  recs = [dict(r, reductions=["3 seeds, not 5", "budget 50 client steps"])
          for r in _hand_made()]
  recs += [dict(_record("local", s, 0.80), reductions=["budget 50 client steps"])
           for s in (3, 4)]
  assert analysis.seeds_per_cell(analysis.summaries(recs)) == {"cpu": {3: 8, 5: 1}}
  assert grid.states_seed_count("3 seeds, not 5")
  assert not grid.states_seed_count("budget 300 client steps of 32 examples, not 1000")
  results = tmp_path / "runs.jsonl"
  records.ResultsFile(results).append(recs)
  document = tmp_path / "when.md"
  report.write_report(results, document)
  assert ("- cpu: seeds per cell: 5 in 1, 3 in 8 (the full study: 5; the profile runs 5: "
          "`python launch/server_map.py --profile=cpu` resumes the rest); budget 50 client "
          "steps\n") in document.read_text()


# ---- end to end --------------------------------------------------------------------------


def test_tiny_map_tunes_trains_ablates_records_and_resumes(tmp_path, monkeypatch):
  # 3 x 3 grids and one cell so that the test stays small.
  monkeypatch.setattr(v2_grid, "SPLIT_AXIS", (-1.5, -1.0, -0.5))
  monkeypatch.setattr(v2_grid, "LOCAL_AXIS", (-1.5, -1.0, -0.5))
  monkeypatch.setattr(v2_grid, "MAX_EXTENSIONS", 1)
  tiny = dataclasses.replace(grid.PROFILES["test"], examples=(0,), clients=(3,),
                             methods=("mtsl_head", "local"), retune_regimes=((0, 3),))
  monkeypatch.setitem(grid.PROFILES, "test", tiny)
  paths = runner.Paths(tmp_path / "runs.jsonl", tmp_path / "scratch")
  runner.run_profile(paths, "test", verbose=False)
  recs = records.ResultsFile(paths.results).load()
  tuning = ("tune", "tune_cell")
  cells = sorted((r["phase"], r["method"], r["seed"]) for r in recs if r["phase"] not in tuning)
  expected = [(phase, m, s) for phase in ("map", "retuned") for m in tiny.methods
              for s in tiny.seeds]
  expected += [("ablations", f"mtsl_head+{a}", s) for a in grid.ABLATIONS for s in tiny.seeds]
  assert cells == sorted(expected)
  for r in recs:
    if r["phase"] not in tuning:
      assert r["where"]["backend"] == "cpu" and r["reductions"]
      assert r["train_examples"]["mean"] > 0
      assert math.isfinite(r["final"]["accuracy_mean"])
      method = grid.base_method(r["method"])
      point = (runner.cell_tuned_point(recs, "test", "synthetic", method, 0, 3)
               if r["phase"] == "retuned" else
               runner.tuned_point(recs, "test", "synthetic", method))
      assert (r["server_lr"], r["client_lr"]) == (point["server_lr"], point["client_lr"])
  # The cell's own tuning ran its own grid: as many points as the map's tuning.
  for m in tiny.methods:
    per_phase = [sum(r["phase"] == phase and r["method"] == m for r in recs)
                 for phase in tuning]
    assert per_phase[0] == per_phase[1] > 0
  assert np.all([r["server_lr"] is None for r in recs if r["method"] == "local"])
  before = paths.results.read_text()
  runner.run_profile(paths, "test", verbose=False)
  assert paths.results.read_text() == before  # everything recorded: nothing reruns
  document = tmp_path / "when.md"
  report.write_report(paths.results, document)
  text = document.read_text()
  assert "| synthetic / synthetic (test) | mtsl_head |" in text
  assert re.search(r"\*\*[01] of 1 verdicts are the same with cell-tuned rates\*\*", text)


def test_a_diverging_seed_is_recorded_and_the_cell_goes_on(tmp_path):
  # Client rates scaled by data size make each seed its own program (trained one after
  # another); at these rates every seed diverges, which is a result, not a crash.
  paths = runner.Paths(tmp_path / "runs.jsonl", tmp_path / "scratch")
  new = runner.run_cell(paths, "test", "ablations", "synthetic", "synthetic", 0, 3,
                        "mtsl_head+data_size_rates", {"server_lr": 1e4, "client_lr": 1e4},
                        verbose=False)
  assert [r["seed"] for r in new] == list(grid.PROFILES["test"].seeds)
  assert any(r["diverged"] for r in new)  # so the test can fail
  assert all((r["final"] is None) == bool(r["diverged"]) for r in new)


def test_accuracy_cells_print_the_sample_std_beside_the_interval():
  # pylint: disable=import-outside-toplevel
  from mtsl_jax.comparison import report_format, statistics
  i = statistics.t_interval([1, 2, 3, 4, 5])  # sample std sqrt(2.5) = 1.58, half 1.96
  assert report_format.interval_with_std(i, 1, 2) == "3.00 ± 1.96 (sd 1.58)"
  assert report_format.interval_with_std(statistics.t_interval([0.7]), 100) == "70.0 (n=1)"


def test_in_short_pools_each_cuts_cells_over_the_maps_of_a_profile():
  """Hand-made verdicts: mtsl_head wins 3 of 4 cells (2 settings), loses 1 to FedRep;
  the wins at 'all' examples are budget-bound."""
  def claims(*verdicts):
    return {regime: {"verdict": v, "budget_bound": regime == (0, 10)}
            for regime, v in zip(((25, 10), (0, 10)), verdicts)}

  best, fedrep = "best of local and FedAvg", "FedRep"
  diffs = {("cpu", "mnist", "dirichlet_0.3", "mtsl_head", best): claims("holds", "fails"),
           ("cpu", "mnist", "label_permutation", "mtsl_head", best): claims("holds", "holds"),
           ("cpu", "mnist", "dirichlet_0.3", "mtsl_head", fedrep):
               claims("not significant", "fails")}
  (head,) = [line for line in answer.in_short(diffs) if line.startswith("- mtsl_head")]
  assert head.startswith("- mtsl_head, the client holding the head") and "1.1% of the" in head
  assert ": 3 / 0 / 1 of 4 cells (FedRep: 0 / 1 / 1); budget-bound of those: 1 / 0 / 1;" in head
  assert "dirichlet_0.3 1 / 0 / 1; label_permutation 2 / 0 / 0" in head
  assert "per client: 25: 2 of 2, all: 1 of 2; per number of clients: 10: 3 of 4." in head


def test_the_short_answer_says_which_cuts_help_and_discounts_chance_wins():
  """mtsl_head wins 3 of 4 cells (one budget-bound) and loses 1 to FedAvg: 'helps in most
  cells'. mtsl_u_shaped wins 1 of 20 cells, which a 5% test gives by chance: 'does not
  help', with the reason. mtsl_top2 wins 2 of 20: 'helps in some cells'; so does
  mtsl_bottom's 1 of 2, since exactly half is not most."""
  best = "best of local and FedAvg"

  def claims(verdicts, baseline="local"):
    return {(25 * (i + 1), 10): {"verdict": v, "budget_bound": i == 0, "baseline": baseline}
            for i, v in enumerate(verdicts)}

  diffs = {("cpu", "mnist", "dirichlet_0.3", "mtsl_head", best):
               claims(["holds", "holds", "holds"]),
           ("cpu", "mnist", "label_permutation", "mtsl_head", best):
               claims(["fails"], baseline="fedavg"),
           ("cpu", "mnist", "dirichlet_0.3", "mtsl_u_shaped", best):
               claims(["not significant"] * 19 + ["holds"]),
           ("cpu", "mnist", "dirichlet_0.3", "mtsl_top2", best):
               claims(["not significant"] * 18 + ["holds"] * 2),
           ("cpu", "mnist", "dirichlet_0.3", "mtsl_bottom", best):
               claims(["holds", "not significant"])}
  text = "\n".join(answer.short_answer(diffs))
  assert ("1.1% of the parameters on the client: **helps in most cells**. It wins 3 of 4 "
          "cells (1 of the wins budget-bound; by heterogeneity dirichlet_0.3 3 of 3, "
          "label_permutation 0 of 1), ties 0; it loses 1 to FedAvg.") in text
  assert ("**does not help (its 1 win in 20 cells is no more than chance gives: with no "
          "difference, a two-sided 5% test calls 2.5% of cells a win)**. It wins 1 of 20 "
          "cells") in text
  assert "**helps in some cells**. It wins 2 of 20 cells" in text
  assert "**helps in some cells**. It wins 1 of 2 cells" in text
  assert "ties 18; it loses none." in text


def test_an_ablation_seen_in_some_cells_of_a_row_says_in_how_many():
  """Common init is significantly worse in 1 of a row's 3 cells: the reading is limited to
  that cell, not 'costs accuracy' for the row."""
  found = [{"verdict": v, "mean": m, "diverged": 0, "identical": False}
           for v, m in (("fails", -0.004), ("not significant", 0.001),
                        ("not significant", 0.003))]
  assert answer.ablation_reading("common_init", found) == (
      "1 cell significantly worse, 2 not significant, 0 better (differences from -0.4 to "
      "+0.3 points); starting every client from one initialisation costs accuracy in 1 of "
      "its 3 cells, nothing measurable in the rest.")
