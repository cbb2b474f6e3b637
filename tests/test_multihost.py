"""Multi-process runs: two processes on loopback train like one process.

The two processes are real `launch/train.py` runs joined through `jax.distributed` (CPU
collectives over gloo), each with 2 fake CPU devices, so the client axis is sharded over
a 4-device mesh spanning both. They share one workdir, as processes on a cluster share a
filesystem: the first launch trains to step 20, the second resumes from its checkpoint to
step 40, and the metrics and the final checkpoint must equal an unsharded one-process run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mtsl_jax import distributed, metric_writers, train
from tests.test_train import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ["--config=configs/test.py", "--config.data.num_clients=8",
             "--config.parallel.client_devices=0"]


@pytest.mark.parametrize("kwargs, flag", [
    (dict(process_id=0), "process_id"),
    (dict(num_processes=2, process_id=2), "process_id"),
    (dict(num_processes=0, process_id=0, coordinator_address="h:1"), "num_processes"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0),
     "coordinator_address"),
    (dict(num_processes=2, process_id=0), "coordinator_address"),
    (dict(coordinator_address="h:1", num_processes=2), "process_id"),
    (dict(auto=True, local_device_ids=["0", "x"]), "local_device_ids"),
])
def test_bad_flag_combinations_name_the_flag(kwargs, flag):
  with pytest.raises(distributed.DistributedSetupError, match=f"^--{flag}: "):
    distributed.validate(distributed.DistributedArgs(**kwargs))


def test_good_flag_combinations_pass():
  for kwargs in (dict(), dict(auto=True), dict(auto=True, num_processes=4, process_id=3),
                 dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1,
                      local_device_ids=["0", "1"])):
    distributed.validate(distributed.DistributedArgs(**kwargs))
  assert not distributed.DistributedArgs().enabled


def test_launcher_rejects_bad_flags_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/train.py", *OVERRIDES, f"--workdir={tmp_path}",
       "--num_processes=2", "--process_id=5"],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip() == ("error: --process_id: must be in [0, 2) for "
                                 "--num_processes=2, got 5"), proc.stderr[-2000:]
  assert not (tmp_path / "config.json").exists()  # nothing ran


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(workdir: pathlib.Path, num_steps: int, timeout: float = 300):
  """Runs the launcher as processes 0 and 1; returns their stdouts. Fails with both logs."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  port = _free_port()
  logs = [workdir.parent / f"{workdir.name}.process{i}.{num_steps}.log" for i in range(2)]
  procs = []
  for i in range(2):
    cmd = [sys.executable, "launch/train.py", *OVERRIDES, f"--config.num_steps={num_steps}",
           f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}"]
    with open(logs[i], "w", encoding="utf-8") as log:
      procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True))
  deadline = time.monotonic() + timeout
  # A process that failed leaves the other waiting in a collective: stop it at once.
  while any(p.poll() is None for p in procs):
    if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()
  outputs = [log.read_text(encoding="utf-8") for log in logs]
  if any(p.returncode != 0 for p in procs):
    report = "\n".join(f"--- process {i} (exit {p.returncode}):\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outputs)))
    pytest.fail(f"two-process run to step {num_steps} failed:\n{report}")
  return outputs


def _restore_numpy(workdir: pathlib.Path, step: int):
  """The saved state as numpy arrays, whatever devices wrote it."""
  path = (workdir / "checkpoints" / str(step) / "state").absolute()
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  return checkpointer.restore(
      path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))


def test_two_processes_train_like_one_process(tmp_path):
  shared = tmp_path / "two_processes"
  first = _run_two_processes(shared, num_steps=20)
  second = _run_two_processes(shared, num_steps=40)  # resumes from the step-20 checkpoint
  assert "clients sharded over 4" in first[0] and "step 40: per-task" in second[0], second[0]
  assert "per-task" not in first[1] + second[1]  # only process 0 prints

  config = load_config("test")
  config.data.num_clients = 8  # parallel.client_devices stays 1: unsharded
  train.train_and_evaluate(config, tmp_path / "one_process", verbose=False)

  expected = metric_writers.read_metrics(tmp_path / "one_process")
  got = metric_writers.read_metrics(shared)
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  for a, b in zip(expected, got):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-5,
                                 err_msg=f"step {a['step']} {key}")
  # Only process 0 writes: one timing record per chunk (boundaries 10, 20, 30, 40).
  assert len((shared / "timing.jsonl").read_text().splitlines()) == 4
  assert json.loads((shared / "config.json").read_text())["num_steps"] == 40

  ours, theirs = _restore_numpy(tmp_path / "one_process", 40), _restore_numpy(shared, 40)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
