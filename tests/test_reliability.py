"""Reliability: interruption and resume, killed saves, damaged or foreign checkpoints,
divergence, bad data files, and determinism — through the real launcher where it matters."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mtsl_jax import algorithms, checkpointing, data, fingerprint, metric_writers, train
from tests.test_train import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
LONG = ["--config.num_steps=1000", "--config.log_every=5", "--config.eval_every=1000",
        "--config.checkpoint_every=1000"]


def _cmd(workdir, *overrides):
  return [sys.executable, "launch/train.py", "--config", "configs/test.py", "--workdir",
          str(workdir), *overrides]


def _run(workdir, *overrides):
  return subprocess.run(_cmd(workdir, *overrides), cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=False)


def _start(workdir, *overrides):
  return subprocess.Popen(_cmd(workdir, *overrides), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=120.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.05)
  return False


def _records(workdir):
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return path.read_text().splitlines() if path.exists() else []


def _final_state(workdir, config):
  federation = data.build_federation(config.data, config.seed)
  algorithm = algorithms.build_algorithm(config, federation)
  ckpt = checkpointing.Checkpointer(pathlib.Path(workdir) / "checkpoints",
                                    fingerprint.of_run(config, federation))
  state = ckpt.restore(jax.eval_shape(algorithm.init_state))
  ckpt.close()
  return state


def test_same_seed_gives_identical_metrics_and_another_seed_differs(tmp_path):
  config = load_config("test")
  for name in ("a", "b"):
    train.train_and_evaluate(config, tmp_path / name, verbose=False)
  config.seed = 1
  train.train_and_evaluate(config, tmp_path / "c", verbose=False)
  a, b, c = [(tmp_path / n / "metrics.jsonl").read_bytes() for n in ("a", "b", "c")]
  assert a == b
  assert a != c


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_the_rerun_equals_an_uninterrupted_run(tmp_path, sig):
  proc = _start(tmp_path / "cut", *LONG)
  assert _wait_for(lambda: len(_records(tmp_path / "cut")) >= 3)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, stderr
  assert "Traceback" not in stderr
  assert "stopped by signal" in stderr
  ckpt = checkpointing.Checkpointer(tmp_path / "cut" / "checkpoints", {})
  stopped_at = ckpt.latest_step()
  ckpt.close()
  assert stopped_at is not None and 0 < stopped_at < 1000 and stopped_at % 5 == 0
  resumed = _run(tmp_path / "cut", *LONG)
  assert resumed.returncode == 0, resumed.stderr
  assert f"resuming from step {stopped_at}" in resumed.stdout
  full = _run(tmp_path / "full", *LONG)
  assert full.returncode == 0, full.stderr
  config = load_config("test")
  config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = (
      1000, 5, 1000, 1000)
  for u, v in zip(jax.tree.leaves(_final_state(tmp_path / "cut", config)),
                  jax.tree.leaves(_final_state(tmp_path / "full", config))):
    np.testing.assert_array_equal(u, v)
  assert _records(tmp_path / "cut") == _records(tmp_path / "full")


def test_sigkill_during_checkpointing_leaves_a_usable_checkpoint(tmp_path):
  """Killed while saving every 5 steps, at several moments; the latest checkpoint loads."""
  overrides = ["--config.num_steps=1000", "--config.log_every=5", "--config.eval_every=1000",
               "--config.checkpoint_every=5"]
  config = load_config("test")
  config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = (
      1000, 5, 1000, 5)
  for delay in (0.0, 0.3, 0.7):
    proc = _start(tmp_path, *overrides)
    assert _wait_for(lambda: (tmp_path / "checkpoints").exists() and any(
        p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir()))
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    state = _final_state(tmp_path, config)
    assert int(state.step) % 5 == 0
  # The run resumes from what the kills left (a shorter run keeps the test quick).
  finished = _run(tmp_path, *overrides[1:], f"--config.num_steps={int(state.step) + 10}")
  assert finished.returncode == 0, finished.stderr
  assert f"resuming from step {int(state.step)}" in finished.stdout


def test_leftover_temporary_checkpoint_is_ignored_and_removed(tmp_path):
  assert _run(tmp_path).returncode == 0
  leftover = tmp_path / "checkpoints" / "60.orbax-checkpoint-tmp"
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "garbage").write_bytes(b"\0" * 100)
  ckpt = checkpointing.Checkpointer(tmp_path / "checkpoints", {})
  assert ckpt.latest_step() == 40
  ckpt.close()
  assert not leftover.exists()


def test_a_damaged_checkpoint_is_reported_and_left_in_place(tmp_path):
  assert _run(tmp_path, "--config.num_steps=20").returncode == 0
  step_dir = tmp_path / "checkpoints" / "20"
  for path in (step_dir / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncate every file
  proc = _run(tmp_path)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert "checkpoint at step 20" in last and "cannot be read" in last and "delete" in last
  assert step_dir.exists()  # not overwritten or removed
  assert not (tmp_path / "checkpoints" / "40").exists()


def test_a_checkpoint_of_another_model_is_refused_naming_the_field(tmp_path):
  assert _run(tmp_path).returncode == 0
  proc = _run(tmp_path, "--config.model.hidden_sizes=(32, 16)")
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert "model.hidden_sizes" in last and "new --workdir" in last


def test_divergence_exits_3_naming_step_and_side_and_keeps_the_last_good_checkpoint(tmp_path):
  """Learning rates of 1e3 diverge after a few steps (step 5 measured), each checkpointed."""
  lrs = ["--config.server_optimizer.learning_rate=1e3",
         "--config.client_optimizer.learning_rate=1e3"]
  proc = _run(tmp_path, *lrs, "--config.checkpoint_every=1", "--config.log_every=1")
  assert proc.returncode == 3
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite values at step ")
  bad_step = int(last.split("at step ")[1].split()[0])
  assert bad_step > 1 and ("server" in last or "client" in last)
  config = load_config("test")
  config.server_optimizer.learning_rate = config.client_optimizer.learning_rate = 1e3
  config.checkpoint_every = config.log_every = 1
  state = _final_state(tmp_path, config)
  assert int(state.step) == bad_step - 1  # the last good step, checkpointed before
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state))


def test_a_corrupt_npz_file_gives_one_clear_line(tmp_path):
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"PK\x03\x04 this is not really a zip file")
  proc = _run(tmp_path / "w", "--config.data.source=npz", f"--config.data.npz_path={bad}",
              "--config.model.name=mlp")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: data.npz_path: cannot read")


def test_a_wrongly_shaped_npz_names_the_problem(tmp_path):
  bad = tmp_path / "shapes.npz"
  np.savez(bad, x_train=np.zeros((10, 4)), y_train=np.zeros(9, np.int64),
           x_test=np.zeros((3, 4)), y_test=np.zeros(3, np.int64))
  with pytest.raises(data.DataError, match="data.npz_path"):
    data.load_npz(str(bad))


def test_missing_tfds_data_says_how_to_prepare_them(tmp_path):
  proc = _run(tmp_path / "w", "--config.data.source=tfds", "--config.data.name=mnist",
              f"--config.data.tfds_data_dir={tmp_path / 'empty'}")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  message = proc.stderr[proc.stderr.index("error: "):]  # one message, with a code snippet
  assert "'mnist'" in message and "download_and_prepare" in message


def test_metrics_after_the_restored_step_are_dropped_on_resume(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20, 30))
                  + '{"step": 40, "lo')  # the last line was cut by a crash
  writer = metric_writers.MetricWriter(tmp_path, start_step=20, tensorboard=False)
  writer.write(30, {"loss": 0.5})
  writer.close()
  assert [(r["step"], r["loss"]) for r in metric_writers.read_metrics(tmp_path)] == [
      (10, 1.0), (20, 1.0), (30, 0.5)]
