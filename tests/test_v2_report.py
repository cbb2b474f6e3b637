"""The comparison v2's analysis and report, on hand-made records with known answers."""

import json
import math

import numpy as np
from scipy import stats

from mtsl_jax.comparison import link_model, v2_analysis, v2_grid, v2_report

WHERE = {"backend": "cpu", "device_kind": "cpu", "cpus": 2, "host": "vm", "jax": "0.0",
         "replicas_in_program": 3, "load_1min": 1.5}
CPU = {"profile": "cpu", "dataset": "cifar10"}
SLOW_LINK, MID_LINK = link_model.LINKS[0], link_model.LINKS[1]


def _main(method, seed, curve, *, setting="dirichlet_0.1", per=1, steps=(10, 20, 30, 40),
          exchanges=(2000.0, 1000.0), compute=0.01, diverged=False, profile="cpu",
          dataset="cifar10", rates=(0.01, 0.1)):
  """A main record; its final accuracy is its curve's last value, 10 clients send."""
  bytes_ = [s / per * sum(exchanges) * 10 for s in steps]
  rec = {"phase": "main", "profile": profile, "dataset": dataset, "setting": setting,
         "method": method, "noise": None, "server_lr": rates[0], "client_lr": rates[1],
         "seed": seed, "budget_client_steps": steps[-1], "num_steps": steps[-1] // per,
         "eval_every": steps[0] // per, "client_steps_per_step": per, "batch_size": 32,
         "exchanges": list(exchanges), "compute_seconds_per_step": compute,
         "reductions": ["3 seeds, not 5"], "where": WHERE}
  if diverged:
    return {**rec, "diverged": "non-finite loss", "curve": None, "final": None}
  return {**rec, "diverged": None,
          "curve": {"client_steps": list(steps), "accuracy_mean": list(curve),
                    "accuracy_worst": [a - 0.2 for a in curve], "bytes": bytes_},
          "final": {"accuracy_mean": curve[-1], "accuracy_worst": curve[-1] - 0.2,
                    "accuracy_weighted": curve[-1], "accuracy": [], "bytes": bytes_[-1]}}


def _tune(method, server_lr, client_lr, score, *, profile="cpu", dataset="cifar10",
          setting="dirichlet_0.3"):
  """A tuning record whose score (mean of its last 3 evaluations) is `score`."""
  rec = {"phase": "tune", "profile": profile, "dataset": dataset, "setting": setting,
         "method": method, "noise": None, "server_lr": server_lr, "client_lr": client_lr,
         "seed": 0, "tuning_round": 0, "budget_client_steps": 50, "num_steps": 50,
         "eval_every": 10, "client_steps_per_step": 1, "batch_size": 32,
         "compute_seconds_per_step": 0.001, "reductions": ["3 seeds, not 5"], "where": WHERE}
  if score is None:
    return {**rec, "diverged": "non-finite loss", "curve": None, "final": None}
  return {**rec, "diverged": None,
          "curve": {"client_steps": [10, 20, 30, 40, 50], "accuracy_mean": [0.1] + [score] * 4,
                    "accuracy_worst": [0.0] * 5, "bytes": [0.0] * 5},
          "final": {"accuracy_mean": score, "accuracy_worst": 0.0, "accuracy_weighted": score,
                    "accuracy": [], "bytes": 0.0}}


SERVERS, CLIENTS = (0.001, 0.01, 0.1), (0.001, 0.01, 0.1, 1.0)


def _records():
  recs = []
  # dirichlet_0.1: final accuracies chosen for the paired tests.
  finals = {"mtsl_bottom": [0.80, 0.82, 0.85], "fedavg": [0.75, 0.78, 0.79],
            "fedem": [0.90, 0.93, 0.94]}
  for method, accs in finals.items():
    recs += [_main(method, s, [0.5, 0.6, 0.7, a]) for s, a in enumerate(accs)]
  recs.append(_main("local", 0, [0.5, 0.6, 0.65, 0.70], exchanges=()))
  recs += [_main("local", s, None, diverged=True, exchanges=()) for s in (1, 2)]
  # dirichlet_0.5: curves chosen for the targets; mtsl_bottom's mean final 1.0 is the best.
  curves = {"mtsl_bottom": [[0.5, 0.85, 0.95, 1.0], [0.5, 0.8, 0.92, 1.0], [0.6, 0.91, 1.0, 1.0]],
            "fedavg": [[0.3, 0.6, 0.91, 0.93], [0.3, 0.5, 0.7, 0.8], [0.4, 0.6, 0.92, 0.95]],
            "fedrep": [[0.5, 0.91, 0.95, 0.96]] * 3}
  for method, per_seed in curves.items():
    fed = method != "mtsl_bottom"
    kwargs = dict(per=10, steps=(50, 100, 150, 200), exchanges=(5000.0, 5000.0),
                  compute=0.05) if fed else {}
    recs += [_main(method, s, c, setting="dirichlet_0.5", **kwargs)
             for s, c in enumerate(per_seed)]
  # Tuning: mtsl_bottom's 3 x 4 grid, one point diverged and one not run; local's strip.
  for i, s in enumerate(SERVERS):
    for j, c in enumerate(CLIENTS):
      if (s, c) == (0.001, 1.0):
        recs.append(_tune("mtsl_bottom", s, c, None))
      elif (s, c) != (0.1, 1.0):
        recs.append(_tune("mtsl_bottom", s, c, 0.9 if (i, j) == (1, 2) else 0.1 * (i + j + 1)))
  recs += [_tune("local", None, c, score) for c, score in zip(SERVERS, (0.3, 0.5, 0.6))]
  return recs


def _cell(setting, method):
  summ = v2_analysis.summaries(_records())
  return summ[("cpu", "cifar10", setting, None, method)]


def test_the_paired_claims_and_their_intervals():
  claims = v2_analysis.claims(v2_analysis.summaries(_records()))
  setting = ("cpu", "cifar10", "dirichlet_0.1", None)
  c = claims[("mtsl_bottom", "fedavg")][setting]
  # Differences 0.05, 0.04, 0.06: mean 0.05, sample std 0.01, t_{0.975, 2} on 3 seeds.
  half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
  np.testing.assert_allclose([c["mean"], c["low"], c["high"]], [0.05, 0.05 - half, 0.05 + half])
  np.testing.assert_allclose(c["p"], 2 * stats.t.sf(0.05 / (0.01 / math.sqrt(3)), 2))
  assert (c["verdict"], c["n"], c["seeds"]) == ("holds", 3, [0, 1, 2])
  assert claims[("mtsl_bottom", "fedem")][setting]["verdict"] == "fails"
  # local finished seed 0 only: one common seed.
  one = claims[("mtsl_bottom", "local")][setting]
  assert (one["verdict"], one["note"], one["n"]) == ("not significant", "n < 2", 1)
  np.testing.assert_allclose(one["mean"], 0.80 - 0.70)
  # No claim where a row was not run (mtsl_u_shaped, or fedem on dirichlet_0.5).
  assert ("mtsl_u_shaped", "fedavg") not in claims
  assert ("cpu", "cifar10", "dirichlet_0.5", None) not in claims[("mtsl_bottom", "fedem")]


def test_cell_summaries():
  c = _cell("dirichlet_0.1", "local")
  assert c["seeds"] == [0, 1, 2] and c["diverged"] == [1, 2]
  assert c["accuracy"].n == 1 and c["final_mean"] == {0: 0.70, 1: None, 2: None}
  m = _cell("dirichlet_0.1", "mtsl_bottom")
  np.testing.assert_allclose(m["accuracy"].std, np.std([0.80, 0.82, 0.85], ddof=1))
  half = stats.t.ppf(0.975, 2) * m["accuracy"].std / math.sqrt(3)
  np.testing.assert_allclose(m["accuracy"].half_width, half)
  # [0.5, 0.6, 0.7, 0.8]: the tail (last 1) gains 0.1 over the head's best 0.7.
  assert m["all_plateaued"] is False and m["eval_spacing"] == 0.25
  assert m["rates"] == [(0.01, 0.1)] and m["reductions"] == ["3 seeds, not 5"]


def test_targets_costs_and_wall_clock_by_hand():
  found = v2_analysis.targets(v2_analysis.summaries(_records()))
  t = found[("cpu", "cifar10", "dirichlet_0.5", None)]
  assert t["best_method"] == "mtsl_bottom" and t["best"] == 1.0
  level = t["levels"][0]
  assert level["target"] == 0.9
  # mtsl_bottom reaches 0.9 at client steps 30, 30, 20; one loop step per client step.
  mtsl = level["methods"]["mtsl_bottom"]
  steps = [30, 30, 20]
  np.testing.assert_allclose(mtsl["client_steps"].mean, np.mean(steps))
  np.testing.assert_allclose(mtsl["rounds"].mean, 2 * np.mean(steps))  # 2 exchanges a step
  # 1 Mbit/s, 50 ms: 0.01 s compute + (0.025 + 8 * 2000 / 1e6) + (0.025 + 8 * 1000 / 1e6).
  seconds = [s * 0.084 for s in steps]
  wall = mtsl["seconds"][SLOW_LINK.name]
  half = stats.t.ppf(0.975, 2) * np.std(seconds, ddof=1) / math.sqrt(3)
  np.testing.assert_allclose([wall.mean, wall.low, wall.high],
                             [np.mean(seconds), np.mean(seconds) - half,
                              np.mean(seconds) + half])
  # fedrep: 100 client steps = 10 rounds of 10; at 10 Mbit/s a round is
  # 0.05 + 2 * (0.025 + 8 * 5000 / 1e7) = 0.108 s.
  fedrep = level["methods"]["fedrep"]
  np.testing.assert_allclose(fedrep["seconds"][MID_LINK.name].mean, 10 * 0.108)
  assert fedrep["rounds"].mean == 20 and fedrep["bytes"].mean == 10 * 10000.0 * 10
  assert level["methods"]["fedavg"]["client_steps"] == "reached in 2 of 3"
  high = t["levels"][1]
  np.testing.assert_allclose(high["target"], 0.97)
  assert high["methods"]["fedavg"]["seconds"][SLOW_LINK.name] == "reached in 0 of 3"
  np.testing.assert_allclose(high["methods"]["mtsl_bottom"]["client_steps"].mean, 110 / 3)


def test_tuning_grid_shape_and_chosen_point():
  grids = v2_analysis.tuning_grids(_records())
  g = grids[("cpu", "cifar10", "mtsl_bottom")]
  assert (g["server_axis"], g["client_axis"]) == (list(SERVERS), list(CLIENTS))
  assert np.shape(g["scores"]) == (3, 4) and g["runs"] == 11
  assert g["ran"][2][3] is False and g["scores"][2][3] is None      # not run
  assert g["ran"][0][3] is True and g["scores"][0][3] is None       # diverged
  np.testing.assert_allclose(g["scores"][1][2], 0.9)
  assert (g["chosen"]["server_lr"], g["chosen"]["client_lr"]) == (0.01, 0.1)
  assert g["interior"]
  local = grids[("cpu", "cifar10", "local")]
  assert local["server_axis"] == [None] and np.shape(local["scores"]) == (1, 3)
  assert local["chosen"]["edges"] == ["client_high"] and not local["interior"]


def test_cut_costs_of_the_cifar10_cnn_by_hand_count():
  cuts = v2_analysis.cut_table("cifar10")
  conv1, conv2 = 5 * 5 * 3 * 16 + 16, 5 * 5 * 16 * 32 + 32
  dense, head = 8 * 8 * 32 * 128 + 128, 128 * 10 + 10  # 32 -> 16 -> 8 after two pools
  assert (cuts["bottom"].client_params, cuts["bottom"].server_params) == (
      conv1, conv2 + dense + head)
  assert (cuts["u_shaped"].client_params, cuts["u_shaped"].server_params) == (
      conv1 + head, conv2 + dense)
  assert v2_analysis.methods_with_cut("u_shaped") == ["mtsl_u_shaped"]


def _first_screen(text):
  return text.split("## Where computed")[0]


def _write_twice(results, tmp_path):
  texts, figures = [], []
  for name in ("a", "b"):
    report = tmp_path / name / "REPORT.md"
    v2_report.write_report(results, report)
    texts.append(report.read_text())
    figures.append({p.name: p.read_bytes() for p in sorted((report.parent / "figures").iterdir())})
  assert texts[0] == texts[1] and figures[0] == figures[1]
  return texts[0], figures[0]


def test_report_of_hand_made_records(tmp_path):
  results = tmp_path / "runs.jsonl"
  results.write_text("".join(json.dumps(r) + "\n" for r in _records()))
  text, figures = _write_twice(results, tmp_path)
  first = _first_screen(text)
  assert first.index("## Verdicts") < first.index("## Tuning")
  assert "| claim | cifar10 / dirichlet_0.1 | cifar10 / dirichlet_0.5 |" in first
  row = next(line for line in first.splitlines() if line.startswith("| mtsl_bottom > fedavg"))
  assert "holds +5.0 [2.5, 7.5] p=0.013 n=3" in row
  assert "not significant +10.0 n=1 (n < 2)" in first
  assert "| mtsl_u_shaped > fedavg | mtsl_u_shaped not run yet |" in first
  assert "![tuning cifar10 cpu](figures/tuning_cpu_cifar10.png)" in first
  assert "- mtsl_bottom: server 0.01, client 0.1 (score 0.900); interior; 11 tuning runs" in first
  assert "- local: client 0.1 (score 0.600); on the edge client_high; 3 tuning runs" in first
  assert "- fedavg: not tuned yet" in first
  assert {"tuning_cpu_cifar10.png", "curves_cpu_cifar10_dirichlet_0.1.png",
          "curves_cpu_cifar10_dirichlet_0.5.png"} <= set(figures)
  assert "reached in 2 of 3" in text and "| 1.08 |" in text
  assert "| bottom (1, 0) | mtsl_bottom, splitfed_v1, splitfed_v2 | 1,216 (0.4%) |" in text
  assert "  - 3 seeds, not 5" in text
  assert "on an edge of their grid (a rate beyond it might do better): cpu: cifar10 local" in text
  assert text.index("## Threats to validity") > text.index("## Curves")


def _synthetic_records():
  """A run of the 'test' profile in the records' schema: three methods tuned and run."""
  recs = []
  split = [v2_grid.lr_value(e) for e in v2_grid.SPLIT_AXIS]
  fedopt = [v2_grid.lr_value(e) for e in v2_grid.FEDOPT_SERVER_AXIS]
  local_axis = [v2_grid.lr_value(e) for e in v2_grid.LOCAL_AXIS]
  for method, servers, clients in (("mtsl_bottom", split, split), ("fedavg", fedopt, split),
                                   ("local", [None], local_axis)):
    for i, s in enumerate(servers):
      for j, c in enumerate(clients):
        score = None if (i, j) == (0, 4) else round(0.3 + 0.1 * i - 0.02 * abs(j - 2), 5)
        recs.append(_tune(method, s, c, score, profile="test", dataset="synthetic",
                          setting="synthetic"))
  for method, per, exchanges, top in (("mtsl_bottom", 1, (2176.0, 2048.0), 0.85),
                                      ("fedavg", 5, (5672.0, 5672.0), 0.83),
                                      ("local", 1, (), 0.87)):
    steps = tuple(range(2 * per, 101, 2 * per))
    for seed in (0, 1):
      curve = [round(top + 0.02 * seed - 0.7 * math.exp(-s / 15), 5) for s in steps]
      recs.append(_main(method, seed, curve, setting="synthetic", per=per, steps=steps,
                        exchanges=exchanges, compute=0.0005, profile="test",
                        dataset="synthetic", rates=(None if method == "local" else 0.1, 0.1)))
  return recs


def test_report_of_a_synthetic_run_and_of_no_records(tmp_path):
  results = tmp_path / "runs.jsonl"
  results.write_text("".join(json.dumps(r) + "\n" for r in _synthetic_records()))
  text, figures = _write_twice(results, tmp_path)
  first = _first_screen(text)
  assert "| claim | synthetic / synthetic |" in first
  assert "| mtsl_bottom > fedavg | " in first and "| mtsl_bottom > local | " in first
  assert "| mtsl_bottom > fedem | fedem not run yet |" in first
  assert "![tuning synthetic test](figures/tuning_test_synthetic.png)" in first
  assert "tuning_test_synthetic.png" in figures and "curves_test_synthetic_synthetic.png" in figures
  assert "**synthetic**: MLP 16-16, input (60,), 10 classes" in text
  assert "| mtsl_u_shaped | not run yet |" in text
  # No records at all (the file does not exist yet): every section says so.
  empty = tmp_path / "empty" / "REPORT.md"
  v2_report.write_report(tmp_path / "missing.jsonl", empty)
  text = empty.read_text()
  assert "No main records yet: no claim can be judged." in _first_screen(text)
  assert "No tuning records yet." in _first_screen(text)



def test_unequal_tuning_effort_is_named_among_the_threats():
  grids = {("cpu", "cifar10", "mtsl_bottom"): {"chosen": {"edges": []}, "runs": 30},
           ("cpu", "cifar10", "fedavg"): {"chosen": {"edges": []}, "runs": 25}}
  notes = v2_analysis.validity_notes({}, grids)
  assert notes == ["Unequal tuning effort (grids extended at an edge have more runs): "
                   "cpu: cifar10 (mtsl_bottom 30, fedavg 25)."]
  grids[("cpu", "cifar10", "fedavg")]["runs"] = 30
  assert v2_analysis.validity_notes({}, grids) == []


def test_the_verdict_tally_names_the_claims_that_fail(tmp_path):
  # Hand-made: local-only beats mtsl_bottom by exactly 2 points on every seed ('fails'),
  # fedavg loses to it by 10, 11 and 11 points ('holds': t = 10.67 / (0.577 / sqrt 3)).
  recs = []
  for method, accs in (("mtsl_bottom", [0.70, 0.72, 0.74]), ("local", [0.72, 0.74, 0.76]),
                       ("fedavg", [0.60, 0.61, 0.63])):
    for seed, acc in enumerate(accs):
      recs.append({"phase": "main", "profile": "test", "dataset": "synthetic",
                   "setting": "synthetic", "noise": None, "method": method, "seed": seed,
                   "server_lr": 0.1, "client_lr": 0.1, "diverged": None,
                   "budget_client_steps": 10, "num_steps": 10, "eval_every": 5,
                   "client_steps_per_step": 1, "batch_size": 4, "exchanges": [],
                   "compute_seconds_per_step": 0.01, "reductions": [], "where": {},
                   "curve": {"client_steps": [5, 10], "accuracy_mean": [acc, acc],
                             "accuracy_worst": [acc, acc], "bytes": [0.0, 0.0]},
                   "final": {"accuracy_mean": acc, "accuracy_worst": acc,
                             "accuracy_weighted": acc, "accuracy": [acc], "bytes": 0.0}})
  path = tmp_path / "runs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  v2_report.write_report(path, tmp_path / "REPORT.md")
  text = (tmp_path / "REPORT.md").read_text()
  assert ("Of 2 judged claims: 1 hold, 0 are not significant, 1 fail; the claims that fail "
          "(the baseline is significantly better): mtsl_bottom > local (synthetic / synthetic)."
          ) in text
