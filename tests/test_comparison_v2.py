"""The comparison v2: its grid builds valid configs, its cuts are server-heavy, exchanges
and tuning choices match hand answers, and a tiny end-to-end run resumes from records."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mtsl_jax import cut_costs, models, validation
from mtsl_jax.comparison import (exchanges, records, v2_grid, v2_records, v2_report,
                                 v2_runner)


def test_every_config_of_every_profile_builds_and_validates():
  built = 0
  for profile in v2_grid.PROFILES.values():
    for dataset in profile.datasets:
      main_steps, tune_steps = v2_grid.budgets(profile, dataset)
      for setting in v2_grid.settings_of(profile, dataset):
        for method in profile.methods:
          for tune, steps, evals in ((True, tune_steps, v2_grid.TUNE_EVALS),
                                     (False, main_steps, v2_grid.EVALS)):
            c = v2_grid.make_config(dataset, setting, method, 0.1, 0.1, tune=tune,
                                    client_steps=steps, evals=evals,
                                    max_eval_examples=profile.max_eval_examples)
            assert c.data.evaluate_on == ("validation" if tune else "test")
            assert c.num_steps % c.eval_every == 0
            built += 1
  assert built > 600


def test_bad_names_are_refused_with_the_field():
  with pytest.raises(validation.ConfigError, match="method"):
    v2_grid.make_config("cifar10", "iid", "fedsgd", 0.1, 0.1, tune=False, client_steps=100,
                        evals=10)
  with pytest.raises(validation.ConfigError, match="max_client_steps"):
    v2_grid.make_config("cifar10", "iid", "fedavg_k20", 0.1, 0.1, tune=False,
                        client_steps=10, evals=10)


@pytest.mark.parametrize("method", v2_grid.MAIN_METHODS)
def test_every_method_gets_25_tuning_runs_over_two_decades(method):
  server, client = v2_grid.axes_of(method)
  assert len(server) * len(client) == 25
  assert v2_grid.decades(client) >= 2
  if v2_grid.METHODS[method].axes != "local":
    assert len(server) == len(client) == 5 and v2_grid.decades(server) >= 2
  if v2_grid.METHODS[method].axes == "fedopt":
    assert 1.0 in [v2_grid.lr_value(e) for e in server]  # plain averaging is on the grid


def test_main_runs_evaluate_every_two_percent_when_rounds_allow():
  for method in ("mtsl_bottom", "fedavg", "fedrep", "local"):
    steps, every = v2_grid.schedule(method, "cifar10", 6000, v2_grid.EVALS)
    assert every / steps <= 0.02 + 1e-12
  assert v2_grid.local_steps_value("fedavg_kepoch", "cifar10") == round(45000 / 10 / 32)


@pytest.mark.parametrize("dataset,shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_split_cuts_are_server_heavy(dataset, shape):
  c = v2_grid.make_config(dataset, "iid", "mtsl_bottom", 0.1, 0.1, tune=False,
                          client_steps=500, evals=50)
  costs = cut_costs.block_costs(c.model, shape, 10)
  assert len(costs) == models.num_blocks(c.model) == 4  # conv, conv, dense, head
  bottom = cut_costs.side_costs(costs, 1, 0)
  u_shaped = cut_costs.side_costs(costs, 1, 1)
  # The first conv block: 5x5x3x16 + 16 parameters on CIFAR-10.
  if dataset == "cifar10":
    assert bottom.client_params == 5 * 5 * 3 * 16 + 16
  assert bottom.client_param_share < 0.01 and u_shaped.client_param_share < 0.02
  assert bottom.client_flop_share < 0.5


# ---- exchanges ---------------------------------------------------------------------------

_SPLIT = {"down/cut_gradients": ((32, 32), "float32"), "up/labels": ((32,), "int32"),
          "up/smashed": ((32, 32), "float32")}
_U = {"down/activations": ((32, 32), "float32"), "down/cut_gradients": ((32, 32), "float32"),
      "up/cut_gradients": ((32, 32), "float32"), "up/smashed": ((32, 32), "float32")}
_MODEL = {"down/global_model['w']": ((10, 10), "float32"),
          "up/model_delta['w']": ((10, 10), "float32")}


def test_exchanges_follow_each_protocol():
  # MTSL bottom: smashed data and labels up together, cut gradients down.
  assert exchanges.step_exchanges(_SPLIT, None) == [32 * 32 * 4 + 32 * 4, 32 * 32 * 4]
  # U-shaped: four exchanges of one activation each.
  assert exchanges.step_exchanges(_U, None) == [4096.0] * 4
  # FedAvg's round: the model down, the update up.
  assert exchanges.step_exchanges(_MODEL, 5) == [400.0, 400.0]
  # SplitFed with K = 2: model down, two split steps, update up.
  splitfed = {**_SPLIT, "down/client_model['w']": ((10, 10), "float32"),
              "up/client_model_delta['w']": ((10, 10), "float32")}
  assert exchanges.step_exchanges(splitfed, 2) == [400.0, 4224.0, 4096.0, 4224.0, 4096.0,
                                                   400.0]
  assert exchanges.step_exchanges({}, None) == []
  with pytest.raises(ValueError, match="unknown message"):
    exchanges.step_exchanges({"up/gossip": ((1,), "float32")}, None)


# ---- tuning choice -----------------------------------------------------------------------


def _tune_record(server_lr, client_lr, accs):
  return {"phase": "tune", "profile": "p", "dataset": "d", "setting": "s", "noise": None,
          "method": "m", "seed": 0, "server_lr": server_lr, "client_lr": client_lr,
          "curve": None if accs is None else {"accuracy_mean": accs}}


def test_choose_point_scores_the_last_evaluations_and_names_edges():
  recs = [_tune_record(s, c, [0.1, 0.2, 0.3, 0.4, 0.5 + s + c]) for s in (1, 2, 3)
          for c in (1, 2, 3)]
  recs.append(_tune_record(3, 3, None))  # later record of (3, 3): it diverged
  chosen = v2_records.choose_point(v2_records.select(recs), [1, 2, 3], [1, 2, 3])
  # Scores are the mean of the last 3 evaluations: (0.3 + 0.4 + 0.5 + s + c) / 3.
  assert (chosen["server_lr"], chosen["client_lr"]) in {(2, 3), (3, 2)}
  assert chosen["score"] == pytest.approx((0.3 + 0.4 + 5.5) / 3)
  assert chosen["scores"][(3, 3)] is None
  assert chosen["server_lr"] == 2 and chosen["edges"] == ["client_high"]  # ties: smaller
  interior = v2_records.choose_point(
      [_tune_record(s, c, [1.0 - abs(s - 2) - abs(c - 2)]) for s in (1, 2, 3)
       for c in (1, 2, 3)], [1, 2, 3], [1, 2, 3])
  assert interior["edges"] == [] and (interior["server_lr"], interior["client_lr"]) == (2, 2)
  assert v2_records.tuned_point(recs, "p", "d", "m")["client_lr"] == 3
  assert v2_records.tuned_point(recs, "p", "d", "other") is None


def test_an_edge_extends_its_axis_by_half_a_decade_up_to_the_limit():
  start = ((-1.0, 0.0), (-2.0, -1.0))
  server, client = list(start[0]), list(start[1])
  assert v2_runner.extend_axes({"edges": ["client_high"]}, server, client, start, False)
  assert client == [-2.0, -1.0, -0.5] and server == [-1.0, 0.0]
  assert v2_runner.extend_axes({"edges": ["client_high", "server_low"]}, server, client, start,
                           False)
  assert client == [-2.0, -1.0, -0.5, 0.0] and server == [-1.5, -1.0, 0.0]
  # MAX_EXTENSIONS = 2 reached on the client's high side: no further growth there.
  assert not v2_runner.extend_axes({"edges": ["client_high"]}, server, client, start, False)


# ---- end to end --------------------------------------------------------------------------


def test_tiny_v2_pipeline_tunes_trains_records_and_resumes(tmp_path, monkeypatch):
  # 3 x 3 grids (the real ones are 5 x 5) so that the test stays small.
  monkeypatch.setattr(v2_grid, "SPLIT_AXIS", (-1.5, -1.0, -0.5))
  monkeypatch.setattr(v2_grid, "FEDOPT_SERVER_AXIS", (-0.5, 0.0, 0.5))
  monkeypatch.setattr(v2_grid, "LOCAL_AXIS", (-1.5, -1.0, -0.5))
  monkeypatch.setattr(v2_grid, "MAX_EXTENSIONS", 1)
  paths = v2_runner.Paths(tmp_path / "runs.jsonl", tmp_path / "scratch")
  methods = ["mtsl_bottom", "fedavg", "local"]
  v2_runner.run_profile(paths, "test", methods=methods, verbose=False)
  recs = records.ResultsFile(paths.results).load()
  main = [r for r in recs if r["phase"] == "main"]
  assert sorted((r["method"], r["seed"]) for r in main) == sorted(
      (m, s) for m in methods for s in v2_grid.PROFILES["test"].seeds)
  for method in methods:
    tune = [r for r in recs if r["phase"] == "tune" and r["method"] == method]
    assert len(tune) >= 9 if method != "local" else len(tune) >= 3
    point = v2_records.tuned_point(recs, "test", "synthetic", method)
    mine = [r for r in main if r["method"] == method]
    assert all(r["client_lr"] == point["client_lr"] for r in mine)
    assert all(r["where"]["backend"] == "cpu" and r["reductions"] for r in mine)
  bottom = next(r for r in main if r["method"] == "mtsl_bottom")
  # Synthetic MLP 60-16-16-10, cut after the first block: 32 x 16 floats and 32 labels up,
  # 32 x 16 floats down, per step.
  assert bottom["exchanges"] == [32 * 16 * 4 + 32 * 4, 32 * 16 * 4]
  assert len(bottom["curve"]["client_steps"]) == v2_grid.EVALS
  assert bottom["curve"]["client_steps"][-1] == bottom["budget_client_steps"] == 100
  assert bottom["compute_seconds_per_step"] > 0
  fedavg = next(r for r in main if r["method"] == "fedavg")
  assert fedavg["exchanges"][0] == fedavg["exchanges"][1] > 0  # the model down, delta up
  assert next(r for r in main if r["method"] == "local")["exchanges"] == []
  assert all(math.isfinite(r["final"]["accuracy_mean"]) for r in main)
  before = paths.results.read_text()
  v2_runner.run_profile(paths, "test", methods=methods, verbose=False)
  assert paths.results.read_text() == before  # everything recorded: nothing reruns
  assert all(json.loads(line) for line in before.splitlines())
  assert np.all([r["server_lr"] is None for r in recs if r["method"] == "local"])
  # The report reads the same records: every claim between the rows run has a verdict.
  report = tmp_path / "report" / "REPORT.md"
  v2_report.write_report(paths.results, report)
  text = report.read_text()
  for baseline in ("fedavg", "local"):
    row = next(r for r in text.splitlines() if r.startswith(f"| mtsl_bottom > {baseline} |"))
    assert row.split("|")[2].split()[0] in ("holds", "not", "fails"), row


def test_merging_records_appends_only_new_keys(tmp_path):
  # pylint: disable=import-outside-toplevel
  from mtsl_jax.comparison import merge_records
  here, there = tmp_path / "here.jsonl", tmp_path / "there.jsonl"
  a, b = _tune_record(1, 1, [0.5]), _tune_record(1, 2, [0.6])
  records.ResultsFile(here).append([a])
  records.ResultsFile(there).append([dict(a, where={"backend": "gpu"}), b, b])
  assert merge_records.merge(there, here) == 1
  assert [r["client_lr"] for r in records.ResultsFile(here).load()] == [1, 2]
  assert "where" not in records.ResultsFile(here).load()[0]  # the old record is kept
  assert merge_records.main(["x", str(tmp_path / "missing"), str(here)]) == 2


def test_a_cell_trained_seed_by_seed_records_what_the_vmapped_cell_does(tmp_path, monkeypatch):
  point = {"server_lr": 0.1, "client_lr": 0.1}
  out = {}
  for vmap in (True, False):
    profile = dataclasses.replace(v2_grid.PROFILES["test"], vmap_seeds=vmap)
    monkeypatch.setitem(v2_grid.PROFILES, "test", profile)
    paths = v2_runner.Paths(tmp_path / f"{vmap}.jsonl", tmp_path / f"scratch_{vmap}")
    out[vmap] = v2_runner.run_cell(paths, "test", "synthetic", "synthetic", "mtsl_bottom",
                                   point, verbose=False)
  for grouped, alone in zip(out[True], out[False]):
    assert grouped["seed"] == alone["seed"] and grouped["exchanges"] == alone["exchanges"]
    assert alone["where"]["replicas_in_program"] == 1
    np.testing.assert_allclose(alone["curve"]["accuracy_mean"],
                               grouped["curve"]["accuracy_mean"], atol=0.02)


# Budgets leave a loaded 2-core machine time for the first record of each study.
@pytest.mark.parametrize("study,budget", [("compare_v2", 45), ("server_map", 45),
                                          ("privacy", 45)])
def test_the_device_script_stops_at_its_budget_and_keeps_its_records(tmp_path, study,
                                                                       budget):
  # The GPU script on the embedded data ('test' profile): whatever finished before the
  # budget is in the copy of the records, every line whole, each naming its machine.
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, OUT=str(tmp_path / "out"), PROFILES="test", STUDY=study,
             SCRATCH=str(tmp_path / "scratch"),
             PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
  # The timeout is a safety net, not the check: beside the other pytest worker a run
  # stopped mid-compilation finishes compiling before it stops (seen: over 120 s).
  proc = subprocess.run(["bash", "benchmarks/gpu_study.sh", str(budget)], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = records.ResultsFile(tmp_path / "out" / "runs.jsonl")
  assert len(out.load()) == len(out.path.read_text().splitlines())  # no torn line
  recs = [r for r in out.load() if r["profile"] == "test"]
  assert recs and all(r["where"]["backend"] == "cpu" for r in recs)
  assert "records:" in (tmp_path / "out" / "study.txt").read_text()
