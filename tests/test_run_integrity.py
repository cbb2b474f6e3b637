"""Run integrity (issue #13): every defect found by attacking resume, signals, checkpoints
and the divergence guard, each with the test that failed before its fix.

Signals are sent to real launcher processes; everything else runs in-process on the tiny
test config (a second or two per run).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtsl_jax import checkpointing, fingerprint, loop, metric_writers, optimizers
from mtsl_jax import signals, train, validation, workdir
from mtsl_jax.config_base import optimizer_config
from tests.test_reliability import _cmd, _run, _start, _wait_for
from tests.test_train import load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A long run logging every 5 steps and checkpointing at every log: every chunk ends on a
# checkpoint step, where a signal used to save the same step twice (orbax refused).
LONG = ["--config.num_steps=100000", "--config.log_every=5", "--config.eval_every=100000",
        "--config.checkpoint_every=5"]


def _logged_steps(workdir_):
  path = pathlib.Path(workdir_) / "metrics.jsonl"
  return len(path.read_text().splitlines()) if path.exists() else 0


def _assert_one_line_exit(proc, stderr, code):
  assert proc.returncode == code, stderr
  assert "Traceback" not in stderr, stderr


def _latest_step(workdir_):
  ckpt = checkpointing.Checkpointer(pathlib.Path(workdir_) / "checkpoints", {})
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


# ---- 1. signals ---------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_on_a_checkpoint_step_saves_once_and_exits_128_plus_n(tmp_path, sig):
  proc = _start(tmp_path, *LONG)
  assert _wait_for(lambda: _logged_steps(tmp_path) >= 3)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  _assert_one_line_exit(proc, stderr, 128 + sig)
  assert "stopped by signal" in stderr.strip().splitlines()[-1]
  stopped = _latest_step(tmp_path)
  assert stopped is not None and stopped % 5 == 0
  resumed = _run(tmp_path, *LONG[1:], f"--config.num_steps={stopped + 5}")
  assert resumed.returncode == 0, resumed.stderr
  assert f"resuming from step {stopped}" in resumed.stdout


def test_a_second_signal_stops_at_once_without_a_traceback_and_the_run_resumes(tmp_path):
  # Checkpoint every step: the second signal then lands while a save is pending or running.
  overrides = [*LONG[:2], "--config.checkpoint_every=1", "--config.eval_every=100000"]
  proc = _start(tmp_path, *overrides)
  assert _wait_for(lambda: _logged_steps(tmp_path) >= 3)
  proc.send_signal(signal.SIGTERM)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), stderr
  assert "Traceback" not in stderr, stderr
  stopped = _latest_step(tmp_path)
  resumed = _run(tmp_path, *overrides[1:], f"--config.num_steps={stopped + 3}")
  assert resumed.returncode == 0, resumed.stderr
  assert f"resuming from step {stopped}" in resumed.stdout


@pytest.mark.parametrize("after", ["launch", "banner"])
def test_a_signal_during_start_up_exits_128_plus_n_in_one_line(tmp_path, after):
  proc = _start(tmp_path, *LONG)
  if after == "banner":  # the run is set up: restoring or compiling, or just training
    assert _wait_for(lambda: (tmp_path / "config.json").exists())
  else:  # still importing JAX or parsing flags
    time.sleep(0.3)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=120)
  _assert_one_line_exit(proc, stderr, 128 + signal.SIGINT)
  assert "stopped" in stderr.strip().splitlines()[-1]


def test_a_signal_before_training_raises_at_once_and_during_training_is_recorded():
  requests = signals.StopRequests()
  with pytest.raises(signals.TrainingInterrupted) as e:
    requests.handle(signal.SIGTERM, None)
  assert e.value.immediate and e.value.signum == signal.SIGTERM
  requests.start_training()
  requests.handle(signal.SIGINT, None)  # recorded: the chunk finishes and checkpoints
  assert requests.signum == signal.SIGINT
  with pytest.raises(signals.TrainingInterrupted) as e:
    requests.handle(signal.SIGTERM, None)
  assert e.value.immediate


def test_a_checkpoint_step_that_is_also_a_signal_stop_is_saved_once(tmp_path):
  ckpt = checkpointing.Checkpointer(tmp_path, {"run": 1})
  state = {"w": np.arange(3.0), "step": np.int32(10)}
  window = {"sums": {}, "count": np.int32(0)}
  config = load_config("test")
  config.checkpoint_every = 10
  with pytest.raises(signals.TrainingInterrupted, match="stopped by signal 15 at step 10"):
    train.checkpoint_at_boundary(ckpt, config, 10, state, window, signal.SIGTERM, "rerun")
  assert ckpt.latest_step() == 10
  ckpt.close()


# ---- 2. the fingerprint --------------------------------------------------------------------


def _tiny():
  config = load_config("test")
  config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = 20, 10, 20, 10
  return config


# (field, new value): each changes the computation, so a resume must be refused naming it.
REFUSED = [
    ("seed", 1),
    ("data.partition", "dirichlet"),  # not used by synthetic data, but part of the run
    ("data.synthetic.alpha", 0.5),
    ("data.feature_noise_std", 0.1),
    ("data.label_noise_rate", 0.1),
    ("data.max_examples_per_client", 20),
    ("data.validation_fraction", 0.2),
    ("data.normalization", "none"),  # a later field, in the fingerprint once changed
    ("split.task_weights", "data_size"),
    ("server_optimizer.weight_decay", 1e-4),
    ("client_optimizer.name", "momentum"),
    ("client_optimizer.learning_rate", 0.05),
    ("batch_size", 4),
    ("model.hidden_sizes", (16, 8)),
    ("algorithm", "local"),
]


@pytest.mark.parametrize("field,value", REFUSED)
def test_a_resume_with_any_computation_field_changed_is_refused_naming_both_values(
    tmp_path, field, value):
  config = _tiny()
  train.train_and_evaluate(config, tmp_path, verbose=False)
  before = (tmp_path / "config.json").read_bytes()
  changed = _tiny()
  section, _, name = field.rpartition(".")
  old = (changed[section] if section else changed)[name]
  old = list(old) if isinstance(old, tuple) else old
  (changed[section] if section else changed)[name] = value
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    train.train_and_evaluate(changed, tmp_path, verbose=False)
  new = list(value) if isinstance(value, tuple) else value
  assert f"{field}: checkpoint has {old!r}, config has {new!r}" in str(e.value)
  assert "\n" not in str(e.value)
  # 3. A refused run leaves the record of the run that owns the workdir untouched.
  assert (tmp_path / "config.json").read_bytes() == before


def test_aggregation_weights_are_part_of_a_federated_run_only(tmp_path):
  """fl.aggregation_weights changes FedAvg's computation (a resume with another value is
  refused) but not MTSL's (it resumes); a checkpoint written before the field existed
  averaged with split.task_weights, so that value is left out of the fingerprint."""
  config = _tiny()
  config.algorithm = "fedavg"
  config.fl.aggregation_weights = "uniform"  # = split.task_weights: as before the field
  assert "fl.aggregation_weights" not in fingerprint.run_fingerprint(config, "")["config"]
  train.train_and_evaluate(config, tmp_path / "fedavg", verbose=False)
  config.fl.aggregation_weights = "data_size"
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="fl.aggregation_weights: checkpoint has '<absent>', config has "
                           "'data_size'"):
    train.train_and_evaluate(config, tmp_path / "fedavg", verbose=False)
  mtsl = _tiny()
  train.train_and_evaluate(mtsl, tmp_path / "mtsl", verbose=False)
  mtsl.fl.aggregation_weights = "uniform"
  mtsl.num_steps = 30
  assert int(train.train_and_evaluate(mtsl, tmp_path / "mtsl", verbose=False).state.step) == 30


def test_other_data_under_the_same_fields_are_refused(tmp_path):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.normal(size=(200, 6)).astype(np.float32),
                y_train=rng.integers(0, 3, 200), x_test=rng.normal(size=(40, 6)).astype(np.float32),
                y_test=rng.integers(0, 3, 40))
  path = tmp_path / "d.npz"
  np.savez(path, **arrays)
  config = _tiny()
  config.data.source, config.data.npz_path = "npz", str(path)
  train.train_and_evaluate(config, tmp_path / "w", verbose=False)
  arrays["x_train"] = arrays["x_train"] + 1.0  # same file, same shapes, other content
  np.savez(path, **arrays)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="the data: the clients' arrays"):
    train.train_and_evaluate(config, tmp_path / "w", verbose=False)


def test_only_the_listed_fields_may_change_on_resume(tmp_path):
  config = _tiny()
  train.train_and_evaluate(config, tmp_path, verbose=False)
  resumed = _tiny()
  resumed.num_steps, resumed.log_every, resumed.eval_every = 30, 5, 15
  resumed.checkpoint_every, resumed.eval_batch_size, resumed.max_checkpoints_to_keep = 3, 16, 3
  result = train.train_and_evaluate(resumed, tmp_path, verbose=False)
  assert int(result.state.step) == 30
  # Fields added later are left out only at the default that reproduces older runs.
  assert set(fingerprint.RESUMABLE_FIELDS) | {"num_steps"} | set(fingerprint.LATER_FIELDS) == {
      k for k in fingerprint.flatten(config)
      if k not in fingerprint.run_fingerprint(config, "")["config"]}


def test_num_steps_below_the_checkpoint_or_with_a_decaying_schedule_is_refused(tmp_path):
  config = _tiny()
  train.train_and_evaluate(config, tmp_path, verbose=False)
  config.num_steps = 10
  with pytest.raises(validation.ConfigError, match=r"^config\.num_steps: must be >= 20.*got 10"):
    train.train_and_evaluate(config, tmp_path, verbose=False)
  cosine = _tiny()
  cosine.client_optimizer.schedule = "cosine"
  train.train_and_evaluate(cosine, tmp_path / "cos", verbose=False)
  cosine.num_steps = 40  # the schedule's length: the computation changes
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match="num_steps: checkpoint has 20, config has 40"):
    train.train_and_evaluate(cosine, tmp_path / "cos", verbose=False)


# ---- 4. one live run per workdir -----------------------------------------------------------


def test_a_second_run_on_a_workdir_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
  first = _start(tmp_path, *LONG)
  assert _wait_for(lambda: _logged_steps(tmp_path) >= 2)
  second = _run(tmp_path, *LONG)
  _assert_one_line_exit(second, second.stderr, 2)
  last = second.stderr.strip().splitlines()[-1]
  assert f"is in use by process {first.pid}" in last
  first.kill()  # SIGKILL: the lock file stays behind, its lock does not
  first.communicate(timeout=60)
  stopped = _latest_step(tmp_path)
  resumed = _run(tmp_path, *LONG[1:], f"--config.num_steps={stopped + 5}")
  assert resumed.returncode == 0, resumed.stderr


def test_the_lock_is_exclusive_even_within_one_process(tmp_path):
  with workdir.locked(tmp_path):
    with pytest.raises(workdir.WorkdirError, match=f"is in use by process {os.getpid()}"):
      with workdir.locked(tmp_path):
        pass
  with workdir.locked(tmp_path):  # released
    pass


# ---- 5. decoupled weight decay -------------------------------------------------------------


def _two_steps(name, weight_decay, lr=0.1, momentum=0.9):
  section = optimizer_config(name, lr)
  section.weight_decay, section.momentum = weight_decay, momentum
  tx = optimizers.make_optimizer(section, 10)
  p = jnp.array([1.0, -2.0])
  state = tx.init(p)
  for g in (jnp.array([0.5, 0.25]), jnp.array([-1.0, 0.5])):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
  return np.asarray(p)


@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_weight_decay_is_decoupled_from_momentum(name):
  lr, wd, mu = 0.1, 0.5, 0.9
  p, m = np.array([1.0, -2.0]), np.zeros(2)
  for g in (np.array([0.5, 0.25]), np.array([-1.0, 0.5])):
    m = mu * m + g  # the trace never sees the decay
    direction = g + mu * m if name == "nesterov" else m
    p = p - lr * (direction + wd * p)
  np.testing.assert_allclose(_two_steps(name, wd), p, rtol=1e-6)


def test_adam_with_weight_decay_is_adamw_and_sgd_is_sgdw():
  p = jnp.array([1.0, -2.0])
  tx, state = optax.adamw(0.1, weight_decay=0.5), None
  state = tx.init(p)
  for g in (jnp.array([0.5, 0.25]), jnp.array([-1.0, 0.5])):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(_two_steps("adam", 0.5), p, rtol=1e-6)
  np.testing.assert_allclose(_two_steps("adamw", 0.5), p, rtol=1e-6)
  q = np.array([1.0, -2.0])
  for g in (np.array([0.5, 0.25]), np.array([-1.0, 0.5])):
    q = q - 0.1 * (g + 0.5 * q)
  np.testing.assert_allclose(_two_steps("sgd", 0.5), q, rtol=1e-6)


# ---- 6. sharded runs never put the whole data set on one device ----------------------------

SHARDED = """
import sys, jax, numpy as np
from mtsl_jax import data, train
from tests.test_reliability import _cmd, _run, _start, _wait_for
from tests.test_train import load_config
assert jax.device_count() == 2
whole = []
real_put = jax.device_put
def put(x, *args, **kwargs):
  for leaf in jax.tree.leaves(x):
    if getattr(leaf, "ndim", 0) >= 2 and leaf.shape[0] == 4 and leaf.shape[1] >= 100:
      whole.append(leaf.shape)  # a whole [M, N, ...] data array sent to one device
  return real_put(x, *args, **kwargs)
jax.device_put = put
config = load_config("test")
config.parallel.client_devices = 2
result = train.train_and_evaluate(config, sys.argv[1], verbose=False)
assert not whole, whole
print("ok", result.eval_metrics["test/accuracy_mean"])
"""


def test_a_sharded_run_places_the_data_from_the_host_onto_its_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# ---- 7. the train metrics' window ----------------------------------------------------------


def _train_records(workdir_):
  return [r for r in metric_writers.read_metrics(workdir_) if "loss" in r]


def test_logged_train_metrics_do_not_depend_on_eval_or_checkpoint_intervals(tmp_path):
  config = load_config("test")
  config.num_steps, config.log_every = 40, 10
  config.eval_every, config.checkpoint_every = 40, 40
  train.train_and_evaluate(config, tmp_path / "a", verbose=False)
  config.eval_every, config.checkpoint_every = 7, 3  # chunks cut inside every log window
  train.train_and_evaluate(config, tmp_path / "b", verbose=False)
  assert _train_records(tmp_path / "a") == _train_records(tmp_path / "b")


def test_a_resume_from_inside_a_log_window_logs_the_same_averages(tmp_path):
  config = load_config("test")
  config.num_steps, config.log_every, config.eval_every, config.checkpoint_every = 40, 10, 40, 7
  config.max_checkpoints_to_keep = 10
  train.train_and_evaluate(config, tmp_path / "full", verbose=False)
  shutil.copytree(tmp_path / "full", tmp_path / "cut")
  for later in (28, 35, 40):  # as if killed after the checkpoint of step 21, mid-window
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(later))
  result = train.train_and_evaluate(config, tmp_path / "cut", verbose=False)
  assert int(result.state.step) == 40
  assert ((tmp_path / "cut" / "metrics.jsonl").read_bytes()
          == (tmp_path / "full" / "metrics.jsonl").read_bytes())


# ---- 8. the divergence guard covers the updated parameters --------------------------------


def test_an_update_that_overflows_is_not_applied_even_on_the_last_step(tmp_path):
  """Finite loss and gradients, parameters overflowing to inf: the old guard applied and
  checkpointed them, and the run exited 0."""
  config = load_config("test")
  config.num_steps = config.log_every = config.eval_every = config.checkpoint_every = 1
  config.client_optimizer.learning_rate = 1e38
  with pytest.raises(loop.NonFiniteError,
                     match=r"after step 1: an update overflowed the parameters of client.*"
                           r"lower client_optimizer\.learning_rate"):
    train.train_and_evaluate(config, tmp_path, verbose=False)
  assert _latest_step(tmp_path) is None  # nothing non-finite was saved


def test_the_message_names_the_loss_and_the_side_separately():
  flags = {"finite/losses": np.array([True, False]), "finite/server": np.array(True),
           "finite/clients": np.array([True, False])}
  assert loop.describe_flags(flags) == [
      "the loss of task(s) [1]", "the gradients or updates of client(s) [1]"]
  flags["finite/server"] = np.array(False)
  flags["finite/losses"] = np.array([True, True])
  flags["finite/clients"] = np.array([True, True])
  assert loop.describe_flags(flags) == ["the server's gradient or update"]
  assert "lower server_optimizer.learning_rate," in loop.advice(flags)


# ---- 9. failures that used to hang ---------------------------------------------------------


def test_a_failing_save_ends_the_process_with_one_line_instead_of_hanging(tmp_path):
  """A file-size limit (`ulimit -f`, SIGXFSZ ignored: a write past it fails with EFBIG)
  makes orbax's background writes fail, as a full disk does."""
  command = " ".join(f"'{part}'" for part in _cmd(tmp_path,
                                                    "--config.model.hidden_sizes=(256, 256)"))
  proc = subprocess.run(["bash", "-c", f"trap '' XFSZ; ulimit -f 150; exec {command}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  _assert_one_line_exit(proc, proc.stderr, 2)
  last = proc.stderr.strip().splitlines()[-1]
  assert "error: writing the checkpoint of step 20" in last and "File too large" in last


def test_a_checkpoints_path_that_is_a_file_is_refused_before_anything_runs(tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory")
  proc = _run(tmp_path)
  _assert_one_line_exit(proc, proc.stderr, 2)
  assert "checkpoints is a file" in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "metrics.jsonl").exists()


# ---- bad workdirs and damaged run files ----------------------------------------------------


@pytest.mark.parametrize("make,message", [
    (lambda p: "", "must name a directory"),
    (lambda p: (p / "f").write_text("x") and p / "f", "is a file"),
    (lambda p: (p / "f").write_text("x") and p / "f" / "sub" / "dir", "lies under"),
    (lambda p: "/proc/mtsl_jax_test_workdir", "cannot create it"),
    (lambda p: "/sys/kernel", "not writable|lock"),
    # Checkpoints under a bracketed path are written but cannot be restored (tensorstore).
    (lambda p: p / "seeds=[0, 1]", "brackets"),
])
def test_unusable_workdirs_are_refused_in_one_line(tmp_path, make, message):
  with pytest.raises(workdir.WorkdirError, match=message) as e:
    with workdir.locked(workdir.check_workdir(make(tmp_path))):
      pass
  assert "\n" not in str(e.value)


def test_the_launcher_refuses_a_workdir_that_is_a_file(tmp_path):
  (tmp_path / "f").write_text("x")
  proc = _run(tmp_path / "f")
  _assert_one_line_exit(proc, proc.stderr, 2)
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --workdir ")


RECORD = json.dumps({"step": 10, "loss": 1.0})


@pytest.mark.parametrize("content,kept", [
    (RECORD + "\n" + '{"step": 20, "lo', [10]),  # torn by a crash: dropped
    (RECORD + "\n" + json.dumps({"step": 20, "loss": 2.0}), [10, 20]),  # lost newline only
    (RECORD + "\n\n" + RECORD.replace("10", "20") + "\n", [10, 20]),  # a blank line
])
def test_a_torn_metrics_file_is_repaired_and_never_gets_two_records_on_a_line(
    tmp_path, content, kept):
  (tmp_path / "metrics.jsonl").write_text(content)
  writer = metric_writers.MetricWriter(tmp_path, start_step=20, tensorboard=False)
  writer.write(30, {"loss": 0.5})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == kept + [30]


@pytest.mark.parametrize("content", [
    RECORD + "\n" + "\xff\xfe not utf-8\n" + RECORD + "\n",
    "not json at all\n" + RECORD + "\n",
    "[1, 2, 3]\n",
    json.dumps({"loss": 1.0}) + "\n",
    json.dumps({"step": "10"}) + "\n",
])
def test_a_metrics_file_with_foreign_lines_is_refused_unchanged(tmp_path, content):
  path = tmp_path / "metrics.jsonl"
  path.write_bytes(content.encode("utf-8", "surrogateescape") if "\xff" not in content
                   else content.encode("latin-1"))
  before = path.read_bytes()
  with pytest.raises(metric_writers.MetricsFileError, match="line 1|line 2"):
    metric_writers.MetricWriter(tmp_path, start_step=20, tensorboard=False)
  assert path.read_bytes() == before


def test_the_launcher_refuses_a_damaged_metrics_file_in_one_line(tmp_path):
  assert _run(tmp_path, "--config.num_steps=20").returncode == 0
  with open(tmp_path / "metrics.jsonl", "ab") as f:
    f.write(b"\x00\x01garbage\n")
  proc = _run(tmp_path)
  _assert_one_line_exit(proc, proc.stderr, 2)
  assert "is not a metrics record" in proc.stderr.strip().splitlines()[-1]
