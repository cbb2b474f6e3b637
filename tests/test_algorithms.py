"""The baselines: known answers between methods, hand-counted ledgers, end-to-end runs."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import algorithms, checkpointing, data, loop, methods, train, validation
from tests.test_train import load_config

BASELINES = ("fedavg", "centralized", "local", "fedrep", "splitfed_v1", "splitfed_v2",
             "fedem")


def tiny_config(algorithm, **fl):
  """configs/test.py made smaller still: 4 rounds, 2 local steps, half the clients."""
  config = load_config("test")
  config.algorithm = algorithm
  config.num_steps = 4
  config.log_every = config.eval_every = config.checkpoint_every = 2
  config.fl.local_steps = 2
  config.fl.fedrep_head_steps = 2
  config.fl.num_components = 2
  config.fl.client_fraction = 0.5
  for key, value in fl.items():
    config.fl[key] = value
  return config


def run_steps(config, num_steps):
  """`num_steps` steps of config.algorithm from its initial state, through the loop.

  The steps run in chunks of different lengths through `loop.make_multi_step`, which must
  trace the algorithm's step once (so every known-answer test below also checks that).
  """
  federation = data.build_federation(config.data, config.seed)
  algorithm = algorithms.build_algorithm(config, federation)
  train_data, _ = data.to_device(federation)
  state = jax.jit(algorithm.init_state)()
  run = loop.make_multi_step(algorithm.step, max_traces=1)  # tracing again raises
  for n in (1, num_steps - 1):
    state, summary = run(state, train_data, jnp.asarray(n, jnp.int32))
    assert int(summary["steps_run"]) == n and int(summary["bad_step"]) == -1
  assert int(state.step) == num_steps
  return state, algorithm


def assert_trees_close(a, b, atol=2e-6, rtol=2e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=rtol)


# ---- known answers ------------------------------------------------------------------------


def test_fedavg_with_one_local_step_is_centralized_sgd_on_the_weighted_union():
  """K = 1, all clients, server SGD at lr 1: θ - η Σ w_m ∇f_m, centralized's SGD step."""
  fedavg = tiny_config("fedavg", local_steps=1, client_fraction=1.0)
  fedavg.fl.aggregation_weights = "data_size"  # unequal weights make the check sharper
  fedavg.client_optimizer.learning_rate = 0.3
  fedavg.server_optimizer.learning_rate = 1.0
  central = tiny_config("centralized")
  central.split.task_weights = "data_size"
  central.server_optimizer.learning_rate = 0.3
  s_fedavg, _ = run_steps(fedavg, 3)
  s_central, _ = run_steps(central, 3)
  assert_trees_close(s_fedavg.server.params, s_central.server.params)


def test_fedem_with_one_component_is_fedavg():
  """All responsibilities are 1, so the weighted loss is the plain loss (with sampling)."""
  s_fedem, _ = run_steps(tiny_config("fedem", num_components=1), 3)
  s_fedavg, _ = run_steps(tiny_config("fedavg"), 3)
  assert_trees_close(jax.tree.map(lambda p: p[0], s_fedem.server.params),
                     s_fedavg.server.params)
  np.testing.assert_array_equal(np.asarray(s_fedem.pi), 1.0)


def test_fedrep_without_head_blocks_is_fedavg():
  s_fedrep, _ = run_steps(tiny_config("fedrep", fedrep_head_blocks=0), 3)
  s_fedavg, _ = run_steps(tiny_config("fedavg"), 3)
  assert_trees_close(s_fedrep.server.params, s_fedavg.server.params)


def test_local_training_with_one_client_is_centralized():
  """Same data, initialization, batches and (momentum) optimizer; M = 1."""
  configs = []
  for name in ("local", "centralized"):
    config = tiny_config(name)
    config.data.num_clients = 1
    for side in (config.client_optimizer, config.server_optimizer):
      side.name, side.learning_rate = "momentum", 0.05
    configs.append(config)
  s_local, _ = run_steps(configs[0], 3)
  s_central, _ = run_steps(configs[1], 3)
  assert_trees_close(jax.tree.map(lambda p: p[0], s_local.clients.params),
                     s_central.server.params)


@pytest.mark.parametrize("version", ["splitfed_v1", "splitfed_v2"])
def test_splitfed_with_one_client_is_vanilla_split_learning(version):
  """One client, K = 1: SplitFed's round is one MTSL step (same keys, same cut)."""
  configs = []
  for name in (version, "mtsl"):
    config = tiny_config(name, local_steps=1, client_fraction=1.0)
    config.data.num_clients = 1
    config.server_optimizer.learning_rate = 0.2
    config.client_optimizer.learning_rate = 0.05
    configs.append(config)
  s_sfl, _ = run_steps(configs[0], 3)
  s_mtsl, _ = run_steps(configs[1], 3)
  assert_trees_close(s_sfl.server.params, s_mtsl.server.params)
  assert_trees_close(s_sfl.client_params,
                     jax.tree.map(lambda p: p[0], s_mtsl.clients.params))


# ---- ledgers against hand counts ----------------------------------------------------------

D, H, M, B = 60, 16, 4, 8  # synthetic features, hidden width (configs/test.py), clients, batch
F32 = 4


def _mlp_bytes(*sizes):
  """float32 bytes of dense layers sizes[0] -> sizes[1] -> ... (kernels and biases)."""
  return F32 * sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def _traffic(name, **fl):
  config = tiny_config(name, **fl)
  federation = data.build_federation(config.data, config.seed)
  num_classes = int(federation.num_classes.max())
  return algorithms.build_algorithm(config, federation).traffic, num_classes


def test_fedavg_ledger_is_the_model_down_and_up_per_sampled_client():
  traffic, c = _traffic("fedavg", client_fraction=0.5)  # S = 2 of 4
  model = _mlp_bytes(D, H, H, c)
  np.testing.assert_allclose(traffic.uplink_M, [model * 2 / 4] * M)
  np.testing.assert_allclose(traffic.downlink_M, [model * 2 / 4] * M)
  assert traffic.total_per_step == 2 * 2 * model  # exact: S clients, both directions
  full, _ = _traffic("fedavg", client_fraction=1.0)
  np.testing.assert_array_equal(full.uplink_M, [model] * M)


def test_fedrep_and_fedem_ledgers():
  fedrep, c = _traffic("fedrep", client_fraction=1.0)
  np.testing.assert_array_equal(fedrep.uplink_M, [_mlp_bytes(D, H, H)] * M)  # body only
  fedem, _ = _traffic("fedem", client_fraction=1.0, num_components=2)
  np.testing.assert_array_equal(fedem.downlink_M, [2 * _mlp_bytes(D, H, H, c)] * M)


@pytest.mark.parametrize("name", ["splitfed_v1", "splitfed_v2"])
def test_splitfed_ledger_is_k_split_steps_plus_the_client_model(name):
  traffic, c = _traffic(name, client_fraction=1.0, local_steps=3)
  # u_shaped: per split step up smashed [B, H] + cut gradient [B, H], down the same two.
  client_model = _mlp_bytes(D, H) + _mlp_bytes(H, c)
  expected = 3 * 2 * B * H * F32 + client_model
  np.testing.assert_array_equal(traffic.uplink_M, [expected] * M)
  np.testing.assert_array_equal(traffic.downlink_M, [expected] * M)


@pytest.mark.parametrize("name", ["centralized", "local"])
def test_nothing_travels_without_federation(name):
  traffic, _ = _traffic(name)
  assert traffic.total_per_step == 0


# ---- end to end ---------------------------------------------------------------------------


# Every baseline; the federated ones also with one local epoch (fl.local_epochs, see
# tests/test_local_epochs.py), whose plans and masks go through the loop and checkpoints.
@pytest.mark.parametrize("name, local_epochs", [(n, 0) for n in BASELINES] + [
    (n, 1) for n in methods.ROUND_ALGORITHMS])
def test_trains_end_to_end_and_resumes_exactly(name, local_epochs, tmp_path):
  config = tiny_config(name, local_epochs=local_epochs)
  full = train.train_and_evaluate(config, tmp_path / "full", verbose=False)
  assert np.isfinite(full.train_metrics["loss"])
  assert 0 <= full.eval_metrics["test/accuracy_mean"] <= 1
  assert full.train_metrics["comm/total_bytes"] == pytest.approx(
      4 * full.algorithm.traffic.total_per_step)
  (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
  shutil.copytree(tmp_path / "full" / "checkpoints" / "2",
                  tmp_path / "resumed" / "checkpoints" / "2")
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", verbose=False)
  assert int(resumed.state.step) == int(full.state.step) == 4
  for u, v in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_a_checkpoint_of_another_algorithm_is_refused(tmp_path):
  train.train_and_evaluate(tiny_config("local"), tmp_path, verbose=False)
  with pytest.raises(checkpointing.CheckpointMismatchError, match="algorithm"):
    train.train_and_evaluate(tiny_config("centralized"), tmp_path, verbose=False)


# ---- config checks ------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("fedrep_head_blocks", 3, "at least one"),   # the MLP of configs/test.py has 3 blocks
    ("client_fraction", 0.0, r"\(0, 1\]"),
    ("local_steps", 0, ">= 1"),
    ("num_components", 0, ">= 1"),
])
def test_fl_config_mistakes_name_the_field(field, value, message):
  config = tiny_config("fedrep")
  config.fl[field] = value
  with pytest.raises(validation.ConfigError, match=rf"config\.fl\.{field}: .*{message}"):
    validation.validate_config(config)
