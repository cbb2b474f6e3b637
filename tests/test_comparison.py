"""Tests for mtsl_jax.comparison: equal budgets, known answers of the analysis, a tiny
end-to-end reproduction on the embedded synthetic data, resume, and divergence handling."""

import dataclasses
import gzip
import pathlib
import subprocess
import sys

import pytest

from mtsl_jax import loop, validation
from mtsl_jax.comparison import analysis, grid, records, report, runner

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", list(grid.METHODS))
def test_every_method_gets_the_same_budget_and_evaluation_points(method):
  budget = 300
  c = grid.make_config("mnist", "dirichlet_0.3", method, 0.1, budget_steps=budget)
  per = grid.METHODS[method].client_steps_per_step
  assert c.num_steps * per == budget
  assert c.eval_every * grid.EVALS == c.num_steps and c.log_every == c.eval_every
  assert c.data.validation_fraction == grid.VALIDATION_FRACTION and c.data.evaluate_on == "test"
  for field in grid.METHODS[method].lr_fields:
    section, leaf = field.split(".")
    assert c[section][leaf] == 0.1
  tuned = grid.make_config("mnist", "dirichlet_0.3", method, 0.1, tune=True, budget_steps=budget)
  assert tuned.data.evaluate_on == "validation"


def test_the_whole_grid_builds_valid_configs():
  # Every dataset's budget must divide among every method's rounds and evaluations.
  runs = runner.preflight(list(grid.DATASETS), list(grid.METHODS), "mnist")
  assert runs > len(grid.DATASETS) * len(grid.METHODS)


@pytest.mark.parametrize("method", ["fedavg", "fedem", "fedrep", "splitfed_v1", "splitfed_v2"])
def test_the_federated_methods_keep_the_uniform_averages_of_the_recorded_comparison(method):
  """results/runs.jsonl was recorded when the federated averages took split.task_weights
  ('uniform'); fl.aggregation_weights (default 'data_size') is pinned to what they used."""
  config = grid.make_config("synthetic", "synthetic", method, 0.1, budget_steps=200)
  assert config.fl.aggregation_weights == "uniform" == config.split.task_weights
  assert config.fl.local_epochs == 0


def test_bad_names_and_budgets_name_the_field():
  with pytest.raises(validation.ConfigError, match="setting"):
    grid.make_config("mnist", "dirichlet_9", "fedavg", 0.1)
  with pytest.raises(validation.ConfigError, match="method"):
    grid.make_config("mnist", "iid", "fedsgd", 0.1)
  with pytest.raises(validation.ConfigError, match="budget_steps"):
    grid.make_config("mnist", "iid", "fedrep", 0.1, budget_steps=120)


def _record(method, setting, seed, accs, *, phase="main", lr=0.1, noise=None, steps=None,
            sent=None, dataset="mnist"):
  steps = steps or [10 * (i + 1) for i in range(len(accs))]
  sent = sent or [1e6 * (i + 1) for i in range(len(accs))]
  curve = {"client_steps": steps, "accuracy_mean": accs, "accuracy_worst": accs,
           "bytes": sent}
  return {"phase": phase, "dataset": dataset, "setting": setting, "noise": noise,
          "method": method, "lr": lr, "seed": seed, "diverged": None, "curve": curve,
          "final": {"accuracy_mean": accs[-1], "accuracy_worst": accs[-1] - 0.1,
                    "accuracy_weighted": accs[-1], "accuracy": [accs[-1]], "bytes": sent[-1]},
          "wall_seconds_group": 1.0, "seeds_in_group": 2, "budget_client_steps": steps[-1]}


def test_first_reaching_and_target_known_answers():
  curve = _record("fedavg", "iid", 0, [0.5, 0.8, 0.9])["curve"]
  assert records.first_reaching(curve, 0.8) == (20.0, 2e6)
  assert records.first_reaching(curve, 0.95) is None
  summaries = {"a": {"acc": (0.95, 0.0)}, "b": {"acc": (0.5, 0.1)}, "c": {"acc": None}}
  assert analysis.target_accuracy(summaries) == 0.85  # floor(0.9 * 0.95 * 100) / 100


def test_claims_on_hand_made_records():
  recs = []
  for seed in (0, 1):
    # iid: MTSL 0.90 and fast; FedAvg 0.92 and slower. 2 classes: MTSL 0.95, FedAvg 0.70.
    recs.append(_record("mtsl_u_shaped", "iid", seed, [0.85, 0.9, 0.9]))
    recs.append(_record("fedavg", "iid", seed, [0.5, 0.85, 0.92], sent=[0.1e6, 0.2e6, 0.3e6]))
    recs.append(_record("mtsl_u_shaped", "2_classes", seed, [0.9, 0.95, 0.95]))
    recs.append(_record("fedavg", "2_classes", seed, [0.6, 0.65, 0.7]))
    recs.append(_record("mtsl_u_shaped", "2_classes", seed, [0.9, 0.9, 0.9], phase="noise",
                        noise=["label_noise_rate", 0.2]))
    recs.append(_record("fedavg", "2_classes", seed, [0.5, 0.6, 0.6], phase="noise",
                        noise=["label_noise_rate", 0.2]))
  main = analysis.table(recs, "main")
  acc = {r["setting"]: r for r in analysis.accuracy_claim(main)}
  assert acc["iid"]["margin"] == pytest.approx(-0.02) and not acc["iid"]["holds"]
  assert acc["2_classes"]["margin"] == pytest.approx(0.25) and acc["2_classes"]["holds"]
  # iid target floor(0.9 * 0.92 * 100) / 100 = 0.82: MTSL at 10 steps, FedAvg at 20.
  steps = {r["setting"]: r for r in analysis.efficiency_claim(main, "steps")}
  assert steps["iid"]["target"] == 0.82
  assert (steps["iid"]["mtsl"], steps["iid"]["best_baseline"]) == (10.0, 20.0)
  assert steps["iid"]["holds"]
  sent = {r["setting"]: r for r in analysis.efficiency_claim(main, "bytes")}
  assert (sent["iid"]["mtsl"], sent["iid"]["best_baseline"]) == (1e6, 0.2e6)
  assert not sent["iid"]["holds"]
  # 2 classes: target floor(0.9 * 0.95 * 100) / 100 = 0.85, FedAvg never reaches it.
  assert steps["2_classes"]["baseline"] is None and steps["2_classes"]["holds"]
  het = analysis.heterogeneity_claim(main)
  assert het[0]["changes"]["mtsl_u_shaped"] == pytest.approx(0.05)
  assert het[0]["changes"]["fedavg"] == pytest.approx(-0.22) and het[0]["holds"]
  noise = analysis.noise_claim(recs)
  assert noise[0]["drops"]["mtsl_u_shaped"] == pytest.approx(0.05)
  assert noise[0]["drops"]["fedavg"] == pytest.approx(0.1) and noise[0]["holds"]
  assert noise[0]["holds_accuracy"]  # 0.9 against 0.6
  local = analysis.accuracy_claim(main, ("local",))
  assert local == []  # no local-only runs in these records: nothing to hold against


def test_tuning_picks_the_best_rate_and_skips_diverged_ones():
  recs = [_record("fedavg", "dirichlet_0.3", 0, [0.8], phase="tune", lr=0.03),
          _record("fedavg", "dirichlet_0.3", 0, [0.9], phase="tune", lr=0.1),
          dict(_record("fedavg", "dirichlet_0.3", 0, [0.0], phase="tune", lr=0.3),
               final=None, curve=None, diverged="non-finite"),
          _record("local", "dirichlet_0.3", 0, [0.9], phase="tune", lr=0.3),
          _record("local", "dirichlet_0.3", 0, [0.9], phase="tune", lr=0.1)]
  assert analysis.tuned_learning_rates(recs) == {("mnist", "fedavg"): 0.1,
                                               ("mnist", "local"): 0.1}  # tie: smaller


def test_results_file_survives_a_torn_line(tmp_path):
  out = records.ResultsFile(tmp_path / "runs.jsonl")
  out.append([_record("fedavg", "iid", 0, [0.5])])
  with open(out.path, "a", encoding="utf-8") as f:
    f.write('{"phase": "main", "trunc')  # a crash mid-line
  assert len(out.load()) == 1 and len(out.done()) == 1


def test_tiny_reproduction_end_to_end_resumes_and_reports(tmp_path, monkeypatch):
  monkeypatch.setattr(grid, "LR_GRID", (0.05, 0.1))
  paths = runner.Paths(results=tmp_path / "runs.jsonl", scratch=tmp_path / "wd")
  methods = ["mtsl_u_shaped", "fedavg"]
  lrs = runner.run_tuning(paths, ["synthetic"], methods, budget_steps=50)
  assert set(lrs) == {("synthetic", m) for m in methods}
  runner.run_main(paths, ["synthetic"], methods, lrs, seeds=(0, 1), budget_steps=50)
  recs = records.ResultsFile(paths.results).load()
  assert len(recs) == 2 * 2 + 2 * 2  # tuning: 2 methods x 2 rates; main: 2 methods x 2 seeds
  main = [r for r in recs if r["phase"] == "main"]
  for r in main:
    assert r["budget_client_steps"] == 50 and r["curve"]["client_steps"][-1] == 50
    assert len(r["curve"]["accuracy_mean"]) == grid.EVALS
    assert r["final"]["accuracy_mean"] > 0.3  # 10 classes: well above chance
  fedavg = next(r for r in main if r["method"] == "fedavg")
  mtsl = next(r for r in main if r["method"] == "mtsl_u_shaped")
  assert fedavg["curve"]["bytes"][-1] > 0 and mtsl["curve"]["bytes"][-1] > 0
  # The seeds of a main cell ran as one vmapped group, each with its own numbers.
  assert mtsl["seeds_in_group"] == 2
  assert len({r["final"]["accuracy_mean"] for r in main if r["method"] == "mtsl_u_shaped"}) == 2

  calls = []
  monkeypatch.setattr(runner.seed_batch, "train_seeds", lambda *a, **k: calls.append(a))
  runner.run_main(paths, ["synthetic"], methods, lrs, seeds=(0, 1), budget_steps=50)
  assert not calls  # everything recorded: a rerun trains nothing

  report_path = tmp_path / "REPORT.md"
  report.write_report(paths.results, report_path)
  text = report_path.read_text()
  assert "higher multi-task accuracy" in text and "| mtsl_u_shaped |" in text
  assert (tmp_path / "figures" / "synthetic_accuracy_vs_steps.png").stat().st_size > 0


def _main_phase_with(train_seeds_at, tmp_path, monkeypatch):
  """Runs the main phase of fedavg at lr 0.1 (grid 0.05, 0.1) for seeds (0, 1), with
  `train_seeds_at(real, lr, config, seeds, workdirs, **kwargs)` in place of train_seeds.

  Returns:
    (the (seeds, lr) of every train_seeds call, the records, a rerun function).
  """
  monkeypatch.setattr(grid, "LR_GRID", (0.05, 0.1))
  real = runner.seed_batch.train_seeds
  calls = []

  def train_seeds(config, seeds, workdirs, **kwargs):
    lr = config.client_optimizer.learning_rate
    calls.append((tuple(seeds), lr))
    return train_seeds_at(real, lr, config, seeds, workdirs, **kwargs)

  monkeypatch.setattr(runner.seed_batch, "train_seeds", train_seeds)
  paths = runner.Paths(results=tmp_path / "runs.jsonl", scratch=tmp_path / "wd")
  rerun = lambda: runner.run_main(paths, ["synthetic"], ["fedavg"],
                                  {("synthetic", "fedavg"): 0.1}, seeds=(0, 1),
                                  budget_steps=50)
  rerun()
  return calls, records.ResultsFile(paths.results).load(), rerun


def test_divergence_is_a_result_isolated_per_seed_with_a_smaller_rate_fallback(
    tmp_path, monkeypatch):
  # Seed 1 diverges at any rate above 0.05 in runs that raise (seeds trained on their
  # own): its group of two stops, the seeds rerun one by one, seed 1 is recorded as
  # diverged at 0.1 and rerun at the grid's next rate, 0.05.
  def raising(real, lr, config, seeds, workdirs, **kwargs):
    if 1 in seeds and lr > 0.05:
      raise loop.NonFiniteError("seed 1: non-finite server loss at step 3\ndetails")
    return real(config, seeds, workdirs, **kwargs)

  calls, recs, rerun = _main_phase_with(raising, tmp_path, monkeypatch)
  assert calls == [((0, 1), 0.1), ((0,), 0.1), ((1,), 0.1), ((1,), 0.05)]
  assert [(r["seed"], r["lr"], r["final"] is None) for r in recs] == [
      (0, 0.1, False), (1, 0.1, True), (1, 0.05, False)]
  assert "step 3" in recs[1]["diverged"] and recs[2]["lr_fallback_from"] == 0.1
  (cell,) = analysis.cells(recs).values()
  assert [(r["seed"], r["lr"]) for r in cell] == [(0, 0.1), (1, 0.05)]
  summary = analysis.summarize_cell(cell)
  assert (summary["lr"], summary["fallback_seeds"], summary["fallback_lrs"]) == (0.1, 1, [0.05])
  assert summary["diverged"] == 0 and summary["acc"] is not None
  calls.clear()
  rerun()
  assert not calls  # all done, fallback included


def test_a_seed_frozen_in_its_group_is_recorded_and_rerun_alone_at_a_smaller_rate(
    tmp_path, monkeypatch):
  # In a group, a diverged seed does not stop the others: its result says it diverged.
  def freezing(real, lr, config, seeds, workdirs, **kwargs):
    results = real(config, seeds, workdirs, **kwargs)
    return [dataclasses.replace(r, diverged="seed=1: non-finite values at step 3\nmore")
            if s == 1 and lr > 0.05 else r for s, r in zip(seeds, results)]

  calls, recs, _ = _main_phase_with(freezing, tmp_path, monkeypatch)
  assert calls == [((0, 1), 0.1), ((1,), 0.05)]
  assert [(r["seed"], r["lr"], r["final"] is None) for r in recs] == [
      (0, 0.1, False), (1, 0.1, True), (1, 0.05, False)]
  assert recs[1]["diverged"] == "seed=1: non-finite values at step 3"
  assert recs[2]["lr_fallback_from"] == 0.1


def test_launcher_rejects_bad_names_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO / "launch" / "reproduce.py"), "--datasets=mnist,cifar1000",
       f"--results={tmp_path / 'r.jsonl'}"], capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 2
  assert "dataset" in result.stderr and "cifar1000" in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "r.jsonl").exists()


def test_compressed_records_append_load_and_survive_a_torn_member(tmp_path):
  """A '.gz' records file: one gzip member per append, readable as one gzip stream; a
  member torn by a crash is skipped on reading and cut off before the next append, so
  the records after it are read again."""
  path = tmp_path / "runs.jsonl.gz"
  out = records.ResultsFile(path)
  out.append([{"seed": 0, "x": 1.5}, {"seed": 1, "x": 2.5}])
  out.append([{"seed": 2, "x": 3.5}])
  assert [r["seed"] for r in out.load()] == [0, 1, 2]
  assert gzip.decompress(path.read_bytes()).decode().splitlines() == [
      '{"seed": 0, "x": 1.5}', '{"seed": 1, "x": 2.5}', '{"seed": 2, "x": 3.5}']
  whole = path.read_bytes()
  path.write_bytes(whole + gzip.compress(b'{"seed": 3}\n', mtime=0)[:-6])  # torn
  assert [r["seed"] for r in out.load()] == [0, 1, 2]
  out.append([{"seed": 4}])
  assert [r["seed"] for r in out.load()] == [0, 1, 2, 4]
  assert path.read_bytes().startswith(whole)
  # The same records give the same bytes (no timestamps in the members).
  again = records.ResultsFile(tmp_path / "again.jsonl.gz")
  again.append([{"seed": 0, "x": 1.5}, {"seed": 1, "x": 2.5}])
  again.append([{"seed": 2, "x": 3.5}])
  assert again.path.read_bytes() == whole
