"""Replica groups in the one training loop: equal to separate runs, per-replica guard, one trace.

Seeds have their own tests (tests/test_seed_batch.py); here the replicas are learning-rate
grid points, which share the data (one copy) and differ only in optimizer-state values.
"""

import copy
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import algorithms, config_base, data, loop, lr_grid, metric_writers, replicas
from mtsl_jax import train

RTOL = 1e-5
SERVER_LRS, CLIENT_LRS = [0.05, 0.2], [0.1, 0.3]
pytestmark = pytest.mark.xdist_group("replicas")


def _tiny(**overrides):
  c = config_base.base_config()
  c.data.num_clients = 3
  c.data.synthetic.max_examples = 80
  c.model.hidden_sizes = (8, 8)
  c.batch_size = 4
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 6, 3, 3, 3
  c.eval_batch_size = 16
  c.progress_bar = False
  for key, value in overrides.items():
    c.update_from_flattened_dict({key: value})
  return c


def _close(a, b, rtol=RTOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  """The 2-point grid through lr_grid, and each point run alone the ordinary way."""
  root = tmp_path_factory.mktemp("grid")
  config = _tiny()
  losses, accs = lr_grid.run_grid(config, SERVER_LRS, CLIENT_LRS, root / "grid", eval_every=3,
                                  num_evals=2)
  singles = []
  for g, (eta_s, eta_c) in enumerate(zip(SERVER_LRS, CLIENT_LRS)):
    c = _tiny(**{"server_optimizer.learning_rate": eta_s,
                 "client_optimizer.learning_rate": eta_c})
    singles.append(train.train_and_evaluate(c, root / f"single{g}", verbose=False))
  return dict(root=root, config=config, losses=losses, accs=accs, singles=singles)


def test_grid_points_equal_their_separate_runs(grid):
  for g in range(len(grid["singles"])):  # each point's separate run wrote single{g}
    records = metric_writers.read_metrics(grid["root"] / f"single{g}")
    loss = [r["loss"] for r in records if "loss" in r]
    acc = [r["test/accuracy_mean"] for r in records if "test/accuracy_mean" in r]
    np.testing.assert_allclose(grid["losses"][g], loss, rtol=RTOL)
    np.testing.assert_allclose(grid["accs"][g], acc, rtol=RTOL)
  # The two points really differ (their rates reached the program through the state).
  assert not np.allclose(grid["losses"][0], grid["losses"][1])


def test_a_finished_grid_reruns_without_training_and_states_match(grid):
  configs = lr_grid.grid_configs(grid["config"], SERVER_LRS, CLIENT_LRS, 3, 2)
  workdirs = [grid["root"] / "grid" / lr_grid.point_name(s, c)
              for s, c in zip(SERVER_LRS, CLIENT_LRS)]
  results = train.train_replicas(configs, workdirs, fallback_fn=pytest.fail,
                                 group_dir=grid["root"] / "grid" / "groups" / "points=0-1")
  for result, single in zip(results, grid["singles"]):
    assert int(result.state.step) == 6 and result.diverged is None
    _close((result.state.server.params, result.state.clients.params),
           (single.state.server.params, single.state.clients.params))


def test_grid_points_share_one_copy_of_the_data_and_seeds_do_not():
  config = _tiny()
  fed = data.build_federation(config.data, config.seed)
  assert replicas.stack_data([fed, fed], 16).shared
  other = data.build_federation(config.data, config.seed + 1)
  stacked = replicas.stack_data([fed, other], 16)
  assert not stacked.shared and stacked.train.x.shape[0] == 2


def test_grid_points_start_from_one_initialization_with_their_own_rates():
  configs = lr_grid.grid_configs(_tiny(), [0.05, 0.2, 0.2], [0.1, 0.3, 0.1], 3, 2)
  configs[2].seed = 1  # another initialization
  algs = [algorithms.build_algorithm(c, data.build_federation(c.data, c.seed))
          for c in configs]
  stacked = replicas.initial_states(configs, algs)
  for r, alg in enumerate(algs):
    want = jax.jit(alg.init_state)()
    got = replicas.unstack(stacked, r)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  rates = stacked.clients.opt_state.hyperparams["learning_rate"]
  np.testing.assert_allclose(rates[:, 0], [0.1, 0.3, 0.1])


def test_a_chunked_grid_equals_the_whole_grid(grid, tmp_path):
  losses, accs = lr_grid.run_grid(grid["config"], SERVER_LRS, CLIENT_LRS, tmp_path,
                                  eval_every=3, num_evals=2, chunk_size=1)
  np.testing.assert_allclose(losses, grid["losses"], rtol=RTOL)
  np.testing.assert_allclose(accs, grid["accs"], rtol=RTOL)
  assert sorted(p.name for p in (tmp_path / "groups").iterdir()) == ["points=0-0",
                                                                     "points=1-1"]


def test_an_interrupted_grid_resumes_bit_for_bit(grid, tmp_path):
  # The group's checkpoint at step 3, as an interrupted grid leaves it.
  src = grid["root"] / "grid" / "groups" / "points=0-1" / "checkpoints" / "3"
  dst = tmp_path / "groups" / "points=0-1" / "checkpoints" / "3"
  shutil.copytree(src, dst)
  losses, accs = lr_grid.run_grid(grid["config"], SERVER_LRS, CLIENT_LRS, tmp_path,
                                  eval_every=3, num_evals=2)
  # Steps 1-3 were not trained again: their records are absent; 4-6 equal bit for bit.
  assert np.isnan(losses[:, 0]).all()
  np.testing.assert_array_equal(losses[:, 1], grid["losses"][:, 1])
  np.testing.assert_array_equal(accs[:, 1], grid["accs"][:, 1])


def test_a_diverged_replica_is_frozen_and_the_others_go_on(grid, tmp_path):
  configs = lr_grid.grid_configs(grid["config"], [SERVER_LRS[0], 1e8],
                                 [CLIENT_LRS[0], 1e8], 3, 2)
  workdirs = [tmp_path / "ok", tmp_path / "bad"]
  ok, bad = train.train_replicas(configs, workdirs, group_dir=tmp_path / "group",
                                 fallback_fn=pytest.fail)
  assert ok.diverged is None
  _close((ok.state.server.params, ok.state.clients.params),
         (grid["singles"][0].state.server.params, grid["singles"][0].state.clients.params))
  assert bad.diverged.startswith("client_optimizer.learning_rate=100000000.0, "
                                 "server_optimizer.learning_rate=100000000.0: non-finite")
  assert "frozen there and the others go on" in bad.diverged
  # Its last good state is kept (finite), and its record ends with the divergence.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(bad.state))
  records = metric_writers.read_metrics(tmp_path / "bad")
  assert records[-1]["diverged"] == bad.diverged
  assert all("diverged" not in r for r in metric_writers.read_metrics(tmp_path / "ok"))
  # Resumed after the end: nothing trains, the frozen replica still reports its message.
  again = train.train_replicas(configs, workdirs, group_dir=tmp_path / "group",
                               fallback_fn=pytest.fail)
  assert again[1].diverged == bad.diverged and again[0].diverged is None


def test_runs_whose_rates_are_program_constants_train_one_after_another(tmp_path, capsys):
  configs = [_tiny(**{"server_optimizer.learning_rate": lr}) for lr in SERVER_LRS]
  calls = []
  train.train_replicas(configs, [tmp_path / "a", tmp_path / "b"], verbose=True,
                       fallback_fn=lambda c, w, verbose: calls.append(w.name))
  assert calls == ["a", "b"]
  assert "another program" in capsys.readouterr().out


def test_runs_one_after_another_load_their_shared_data_once(tmp_path, monkeypatch):
  built = []
  real = data.build_federation
  monkeypatch.setattr(data, "build_federation",
                      lambda *args: built.append(args[1]) or real(*args))
  configs = [_tiny(**{"algorithm": "fedavg", "client_optimizer.learning_rate": lr})
             for lr in (0.05, 0.1)]
  results = train.train_replicas(configs, [tmp_path / "a", tmp_path / "b"])
  assert built == [configs[0].seed]  # the second run reused the first one's federation
  assert all(np.isfinite(r.eval_metrics["test/accuracy_mean"]) for r in results)


def test_a_grid_of_runs_trained_in_turn_records_a_diverged_point_and_goes_on(tmp_path):
  config = _tiny(algorithm="fedavg")
  losses, accs = lr_grid.run_grid(config, [1.0, 1.0, 1.0], [0.1, 1e12, 0.05], tmp_path,
                                  eval_every=3, num_evals=2)
  assert np.isfinite(losses[[0, 2]]).all() and np.isfinite(accs[[0, 2]]).all()
  assert np.isnan(losses[1]).any()  # the huge client rate diverged; its curve ends
  with pytest.raises(loop.NonFiniteError):  # outside a grid, divergence still raises
    train.train_replicas(lr_grid.grid_configs(config, [1.0, 1.0], [1e12, 0.1], 3, 2),
                         [tmp_path / "x", tmp_path / "y"])


def test_the_replicated_runner_traces_once_and_a_second_trace_fails():
  configs = lr_grid.grid_configs(_tiny(), SERVER_LRS, CLIENT_LRS, 3, 2)
  fed = data.build_federation(configs[0].data, configs[0].seed)
  algs = [algorithms.build_algorithm(c, fed) for c in configs]
  train_data, _ = data.to_device(fed)
  run = loop.make_multi_step(jax.vmap(algs[0].step, in_axes=(0, None)), replicated=True,
                             max_traces=1)
  states = jax.jit(lambda: [a.init_state() for a in algs])()
  group = loop.Replicas(states=jax.tree.map(lambda *xs: jnp.stack(xs), *states),
                        frozen=jnp.zeros((2,), bool))
  for n in (3, 1, 4):
    group, summary = run(group, train_data, n)
    assert int(summary["steps_run"]) == n
  assert np.asarray(group.states.step).tolist() == [8, 8]
  # Other data shapes would compile a second program: the check catches it.
  smaller = jax.tree.map(lambda a: a[:, :10] if a.ndim > 1 else a, train_data)
  with pytest.raises(AssertionError, match="traced 2 times, more than the 1 expected"):
    run(group, smaller, 1)
  assert run.traces == 2


def test_disable_jit_runs_the_same_steps_eagerly(tmp_path, monkeypatch):
  config = _tiny()
  config.num_steps = config.log_every = config.eval_every = config.checkpoint_every = 2
  jitted = train.train_and_evaluate(config, tmp_path / "jit", verbose=False)
  seen = []
  build = algorithms.build_algorithm

  def recording_build(c, federation):
    alg = build(c, federation)

    def step(state, train_data):
      seen.append(isinstance(state.step, jax.core.Tracer))
      return alg.step(state, train_data)
    return type(alg)(**{**alg.__dict__, "step": step})

  monkeypatch.setattr(algorithms, "build_algorithm", recording_build)
  eager = copy.deepcopy(config)
  eager.disable_jit = True
  result = train.train_and_evaluate(eager, tmp_path / "eager", verbose=False)
  # Every training step ran on concrete arrays, op by op (shape inference traces once).
  assert seen.count(False) == config.num_steps
  _close(result.eval_metrics["test/accuracy"], jitted.eval_metrics["test/accuracy"])
  _close((result.state.server.params, result.state.clients.params),
         (jitted.state.server.params, jitted.state.clients.params), rtol=1e-4)


def test_a_signal_stops_a_grid_at_a_checkpoint_every_point_has_logged(tmp_path):
  """SIGINT to `launch/lr_sweep.py`: the group finishes its chunk, checkpoints the step
  every point's metrics.jsonl ends at, and exits 130 in one line."""
  root = pathlib.Path(__file__).resolve().parents[1]
  cmd = [sys.executable, "launch/lr_sweep.py", "--config", "configs/test.py",
         "--config.num_steps=100000", "--server_lrs=0.05,0.2", "--client_lrs=0.1",
         "--eval_every=5", f"--workdir={tmp_path / 'grid'}", f"--out_dir={tmp_path}"]
  proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  points = [tmp_path / "grid" / lr_grid.point_name(s, 0.1) for s in (0.05, 0.2)]
  deadline = time.time() + 300
  while time.time() < deadline and not all(
      (p / "metrics.jsonl").exists() and len((p / "metrics.jsonl").read_text().splitlines()) > 4
      for p in points):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGINT, stderr
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  assert "stopped by signal 2" in last and "rerun the same command to resume" in last
  group = tmp_path / "grid" / "groups" / "points=0-1" / "checkpoints"
  saved = max(int(p.name) for p in group.iterdir() if p.name.isdigit())
  for point in points:
    assert metric_writers.read_metrics(point)[-1]["step"] == saved
