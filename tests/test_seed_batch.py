"""Seeds vmapped in one program: same results as separate runs, resumable, honest fallback.

The expensive runs happen once (module fixture): the sweep {'seed': [0, 1]} of the tiny test
config run the ordinary way (recording each seed's TrainResult) and with `vmap_seeds=True`.
"""

import json
import re
import shutil

import jax
import numpy as np
import pytest

from mtsl_jax import data, loop, metric_writers, seed_batch, sweeps, train
from tests.test_train import load_config

SEEDS = [0, 1]
RTOL = 1e-5
# One worker runs the module's shared fixture under `pytest -n 2 --dist loadgroup`.
pytestmark = pytest.mark.xdist_group("seed_batch")


def _must_not_run(config, workdir, verbose):
  raise AssertionError(f"seed {config.seed} fell back to a sequential run ({workdir})")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Both sweeps of {'seed': [0, 1]}: sequential (with its results) and vmapped."""
  root = tmp_path_factory.mktemp("seed_batch")
  base = load_config("test")
  singles = {}

  def recording_train(config, workdir, verbose):
    singles[config.seed] = train.train_and_evaluate(config, workdir, verbose=verbose)
    return singles[config.seed]

  seq_rows = sweeps.run_sweep(base, {"seed": SEEDS}, root / "seq", train_fn=recording_train)
  vm_rows = sweeps.run_sweep(base, {"seed": SEEDS}, root / "vm", vmap_seeds=True,
                             train_fn=_must_not_run)
  return dict(root=root, base=base, singles=singles, seq_rows=seq_rows, vm_rows=vm_rows,
              group_dir=root / "vm" / "seed_groups" / "base_seeds=0,1",
              vm_workdirs=[root / "vm" / sweeps.run_name({"seed": s}) for s in SEEDS])


def _assert_trees_close(a, b, rtol=RTOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=1e-6)


def test_vmapped_seeds_match_separate_runs(runs):
  # Rerunning the finished group restores its last checkpoint: no training, final states.
  results = seed_batch.train_seeds(runs["base"], SEEDS, runs["vm_workdirs"],
                                   group_dir=runs["group_dir"])
  for seed, result in zip(SEEDS, results):
    single = runs["singles"][seed]
    assert int(result.state.step) == 40
    _assert_trees_close(result.state, single.state)
    for key, value in single.eval_metrics.items():
      np.testing.assert_allclose(result.eval_metrics[key], value, rtol=RTOL, err_msg=key)
  # The seeds really differ (own data, own initial parameters and keys).
  assert not np.allclose(jax.tree.leaves(results[0].state.server.params)[0],
                         jax.tree.leaves(results[1].state.server.params)[0])


def test_a_group_of_one_matches_its_separate_run(runs, tmp_path):
  seed = SEEDS[1]
  (result,) = seed_batch.train_seeds(runs["base"], [seed], [tmp_path / "one"],
                                     group_dir=tmp_path / "group", allow_single=True,
                                     fallback_fn=_must_not_run)
  assert (tmp_path / "group" / "checkpoints").exists()  # it ran as a group
  _assert_trees_close(result.state, runs["singles"][seed].state)
  for key, value in runs["singles"][seed].eval_metrics.items():
    np.testing.assert_allclose(result.eval_metrics[key], value, rtol=RTOL, err_msg=key)


def test_each_seed_writes_its_own_metrics_like_an_ordinary_run(runs):
  for seed, workdir in zip(SEEDS, runs["vm_workdirs"]):
    ours = metric_writers.read_metrics(workdir)
    theirs = metric_writers.read_metrics(runs["root"] / "seq" / workdir.name)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [10, 20, 20, 30, 40, 40]
    for a, b in zip(ours, theirs):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=1e-6, err_msg=key)
    assert json.loads((workdir / "config.json").read_text())["seed"] == seed
    assert not (workdir / "checkpoints").exists()  # the group holds the checkpoints


def test_vmapped_sweep_writes_the_same_summary_rows(runs):
  assert len(runs["vm_rows"]) == len(runs["seq_rows"]) == 2
  for ours, theirs in zip(runs["vm_rows"], runs["seq_rows"]):
    assert list(ours) == list(theirs)
    for key in ours:
      np.testing.assert_allclose(ours[key], theirs[key], rtol=RTOL, err_msg=key)
  # Rerunning skips every finished seed.
  again = sweeps.run_sweep(runs["base"], {"seed": SEEDS}, runs["root"] / "vm",
                           vmap_seeds=True, train_fn=_must_not_run)
  assert again == runs["vm_rows"]


def test_an_interrupted_group_resumes_exactly(runs, tmp_path):
  group_dir = tmp_path / "group"
  (group_dir / "checkpoints").mkdir(parents=True)
  shutil.copytree(runs["group_dir"] / "checkpoints" / "20", group_dir / "checkpoints" / "20")
  workdirs = [tmp_path / f"seed={s}" for s in SEEDS]
  resumed = seed_batch.train_seeds(runs["base"], SEEDS, workdirs, group_dir=group_dir)
  for seed, result, workdir in zip(SEEDS, resumed, workdirs):
    single = runs["singles"][seed]
    assert int(result.state.step) == 40
    _assert_trees_close(result.state, single.state)
    assert [r["step"] for r in metric_writers.read_metrics(workdir)] == [30, 40, 40]
  # Bit for bit against the uninterrupted group's checkpoint at step 40.
  full = seed_batch.train_seeds(runs["base"], SEEDS, runs["vm_workdirs"],
                                group_dir=runs["group_dir"])
  for a, b in zip(resumed, full):
    for u, v in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_data_size_weights_with_different_counts_fall_back_sequentially(tmp_path, capsys):
  config = load_config("test")
  config.split.task_weights = "data_size"
  feds = [data.build_federation(config.data, s) for s in SEEDS]
  assert not np.array_equal(feds[0].train_counts, feds[1].train_counts)
  calls = []
  seed_batch.train_seeds(config, SEEDS, [tmp_path / "a", tmp_path / "b"], verbose=True,
                         fallback_fn=lambda c, w, verbose: calls.append((c.seed, w.name)))
  assert calls == [(0, "a"), (1, "b")]
  # The reason comes from comparing the traced programs: the weights are constants.
  assert "another program" in capsys.readouterr().out
  assert not (tmp_path / "seed_groups").exists()


def test_a_diverged_seed_is_frozen_and_named_while_the_group_finishes(tmp_path):
  config = load_config("test")
  config.num_steps = config.log_every = config.eval_every = config.checkpoint_every = 10
  config.client_optimizer.learning_rate = config.server_optimizer.learning_rate = 1e6
  results = seed_batch.train_seeds(config, SEEDS, [tmp_path / "a", tmp_path / "b"])
  for seed, result in zip(SEEDS, results):
    assert re.match(rf"seed={seed}: non-finite values at step \d+ in: .*(server|client)",
                    result.diverged)
    assert "this replica is frozen there and the others go on" in result.diverged
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(result.state))
  with pytest.raises(loop.NonFiniteError, match="seed=0: non-finite"):
    sweeps.run_sweep(config, {"seed": SEEDS}, tmp_path / "sweep", vmap_seeds=True)
