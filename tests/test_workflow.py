"""The research workflow around training: sweeps (resumable) and comparison plots."""

import csv
import pathlib
import subprocess
import sys

import pytest

from mtsl_jax import plotting, sweeps, train, validation
from tests.test_train import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_expand_is_the_product_in_a_stable_order():
  combos = sweeps.expand({"a.x": [1, 2], "seed": [0, 1, 2]})
  assert combos == [{"a.x": 1, "seed": 0}, {"a.x": 1, "seed": 1}, {"a.x": 1, "seed": 2},
                    {"a.x": 2, "seed": 0}, {"a.x": 2, "seed": 1}, {"a.x": 2, "seed": 2}]
  assert sweeps.run_name({"server_optimizer.learning_rate": 0.1, "seed": 2}) == (
      "learning_rate=0.1_seed=2")


def test_a_bad_sweep_fails_before_any_run(tmp_path):
  calls = []
  with pytest.raises(validation.ConfigError, match="server_optimizer.learning_rte"):
    sweeps.run_sweep(load_config("test"), {"server_optimizer.learning_rte": [0.1]}, tmp_path,
                     train_fn=lambda *a, **k: calls.append(a))
  with pytest.raises(validation.ConfigError, match="client_optimizer.learning_rate"):
    sweeps.run_sweep(load_config("test"), {"client_optimizer.learning_rate": [0.1, -1.0]},
                     tmp_path, train_fn=lambda *a, **k: calls.append(a))
  assert not calls


def test_sweep_runs_each_combination_once_and_skips_finished_runs(tmp_path):
  calls = []

  def counting_train(config, workdir, verbose):
    calls.append(pathlib.Path(workdir).name)
    return train.train_and_evaluate(config, workdir, verbose=verbose)

  base = load_config("test")
  sweep = {"client_optimizer.learning_rate": [0.05, 0.2], "seed": [0, 1]}
  rows = sweeps.run_sweep(base, sweep, tmp_path, train_fn=counting_train)
  assert len(calls) == 4 and len(rows) == 4
  with open(tmp_path / "summary.csv", encoding="utf-8") as f:
    table = list(csv.DictReader(f))
  assert [(float(r["client_optimizer.learning_rate"]), int(r["seed"])) for r in table] == [
      (0.05, 0), (0.05, 1), (0.2, 0), (0.2, 1)]
  assert all(0.0 <= float(r["test/accuracy_mean"]) <= 1.0 for r in table)
  # Seeds differ, so their results differ; the rerun trains nothing and gives the same rows.
  assert table[0]["test/loss_mean"] != table[1]["test/loss_mean"]
  again = sweeps.run_sweep(base, sweep, tmp_path, train_fn=counting_train)
  assert len(calls) == 4
  assert again == rows
  # A run without result.json (interrupted) is run again and resumes from its checkpoint.
  (tmp_path / "learning_rate=0.2_seed=1" / "result.json").unlink()
  sweeps.run_sweep(base, sweep, tmp_path, train_fn=counting_train)
  assert calls[-1] == "learning_rate=0.2_seed=1" and len(calls) == 5


def test_plot_reads_runs_and_writes_png_and_pdf(tmp_path):
  config = load_config("test")
  result = train.train_and_evaluate(config, tmp_path / "mtsl", verbose=False)
  run = plotting.load_run(tmp_path / "mtsl")
  assert run["label"] == "mtsl (u_shaped)"
  assert list(run["steps"]) == [20, 40]
  # Bytes at each evaluation are the per-step ledger times the step (a known answer).
  per_step = result.algorithm.traffic.total_per_step
  assert list(run["bytes"]) == [20 * per_step, 40 * per_step]
  proc = subprocess.run(
      [sys.executable, "launch/plot.py", f"--workdirs={tmp_path / 'mtsl'},{tmp_path / 'mtsl'}",
       "--labels=a,b", f"--out={tmp_path / 'fig'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  for ext in (".png", ".pdf"):
    path = tmp_path / f"fig{ext}"
    assert path.exists() and path.stat().st_size > 1000


def test_sweep_launcher_runs_a_sweep_file_and_reports_errors(tmp_path):
  sweep_file = tmp_path / "tiny_sweep.py"
  sweep_file.write_text(
      "from mtsl_jax import config_base\n"
      "def get_config():\n"
      "  c = config_base.base_config()\n"
      "  c.data.num_clients, c.data.synthetic.max_examples = 3, 100\n"
      "  c.model.hidden_sizes, c.batch_size, c.num_steps = (8, 8), 4, 10\n"
      "  c.log_every = c.eval_every = c.checkpoint_every = 10\n"
      "  c.progress_bar = False\n"
      "  return c\n"
      "def get_sweep():\n"
      "  return {'seed': [0, 1]}\n")
  cmd = [sys.executable, "launch/sweep.py", f"--sweep={sweep_file}", f"--dir={tmp_path / 's'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "2 runs; summary:" in proc.stdout
  assert (tmp_path / "s" / "seed=1" / "result.json").exists()
  sweep_file.write_text(sweep_file.read_text().replace("{'seed': [0, 1]}",
                                                       "{'batch_size': [0]}"))
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: config.batch_size:")
