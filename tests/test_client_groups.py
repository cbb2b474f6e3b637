"""Clients of different widths (`model.client_width_groups`, `mtsl_jax/client_groups.py`).

Known answers: groups of the configured width are the single-group run; with different
widths, client m's gradient is the gradient of its own loss through its own architecture
and the server's is Σ_m w_m ∇φ f_m; one trace; bad values are ConfigErrors; a grouped run
trains, evaluates, checkpoints and resumes exactly.
"""

import dataclasses
import functools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import algorithms, client_groups, config_base, data, loop, metric_writers
from mtsl_jax import lr_study, smoothness, split_gradients, train, validation
from tests.test_split import _assert_trees_close, _single_task_loss
from tests.test_train import load_config

# Every orientation with a client block of free width: (client_bottom_blocks, top_blocks).
CUTS = {"bottom": (2, 0), "top": (0, 2), "u_shaped": (2, 1)}
UNEVEN = ((1, 1.0), (3, 1.0))  # uneven sizes, so a mix-up of client order would show


def _config(orientation="u_shaped", groups=(), implementation="fused"):
  """configs/test.py (4 Synthetic clients) with one more hidden layer, cut as asked."""
  config = load_config("test")
  config.model.hidden_sizes = (16, 16, 16)
  config.split.orientation = orientation
  config.split.client_bottom_blocks, config.split.client_top_blocks = CUTS[orientation]
  config.split.implementation = implementation
  config.model.client_width_groups = groups
  return config


@functools.cache
def _federation():
  """The test config's federation (the same for every cut and width) and its train data."""
  config = _config()
  federation = data.build_federation(config.data, config.seed)
  return federation, data.to_device(federation)[0]


def _train_steps(config, num_steps):
  """(initial state, state after `num_steps` steps, summary) of `config`'s algorithm."""
  validation.validate_config(config)
  federation, train_data = _federation()
  algorithm = algorithms.build_algorithm(config, federation)
  init = jax.jit(algorithm.init_state)()
  run = loop.make_multi_step(algorithm.step, donate=False)
  state, summary = run(init, train_data, jnp.asarray(num_steps, jnp.int32))
  return init, state, summary


def _stacked(client_tree):
  """A tuple-over-groups client tree as one tree stacked over all clients."""
  return jax.tree.map(lambda *groups: jnp.concatenate(groups), *client_tree)


@pytest.mark.parametrize("orientation,implementation", [
    ("bottom", "fused"), ("top", "fused"), ("u_shaped", "fused"), ("u_shaped", "protocol")])
def test_groups_of_the_configured_width_equal_one_group(orientation, implementation):
  init_1, one, summary_1 = _train_steps(_config(orientation, (), implementation), 5)
  init_g, grouped, summary_g = _train_steps(_config(orientation, UNEVEN, implementation), 5)
  assert isinstance(grouped.clients.params, tuple) and len(grouped.clients.params) == 2
  # Client m's initialization depends on m alone, so the groups start exactly there.
  _assert_trees_close(_stacked(init_g.clients.params), init_1.clients.params, atol=0, rtol=0)
  _assert_trees_close(init_g.server.params, init_1.server.params, atol=0, rtol=0)
  _assert_trees_close(_stacked(grouped.clients.params), one.clients.params)
  _assert_trees_close(_stacked(grouped.clients.opt_state), one.clients.opt_state)
  _assert_trees_close(grouped.server.params, one.server.params)
  for key in ("task_loss", "loss", "client/grad_norm", "server/grad_norm"):
    np.testing.assert_allclose(summary_g["mean"][key], summary_1["mean"][key], rtol=1e-5,
                               atol=1e-6)


def _mixed_problem(orientation):
  """Two groups of different widths, non-uniform weights, label spaces of different sizes."""
  c = config_base.base_config()
  c.model.hidden_sizes = (8, 7, 6)
  c.model.client_width_groups = ((1, 0.5), (3, 2.0))
  c.split.orientation = orientation
  c.split.client_bottom_blocks, c.split.client_top_blocks = CUTS[orientation]
  model = client_groups.make_split_model(c.model, c.split, 5)
  sp, cp = model.init(jax.random.PRNGKey(0), (12,), 4)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 12))
  num_classes = jnp.array([5, 3, 5, 2])
  y = jax.random.randint(jax.random.PRNGKey(2), (4, 6), 0, num_classes[:, None])
  return model, sp, cp, x, y, num_classes, jnp.array([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("orientation", list(CUTS))
def test_mixed_widths_give_each_client_the_gradient_of_its_own_architecture(orientation):
  model, sp, cp, x, y, k, w = _mixed_problem(orientation)
  widths = {jax.tree.leaves(g)[0].shape[1:] for g in cp}
  assert len(widths) == 2  # the groups really differ
  fused = split_gradients.fused_gradients(model, sp, cp, x, y, k, w)
  _assert_trees_close(fused, split_gradients.protocol_gradients(model, sp, cp, x, y, k, w)[:4])
  g_server, g_clients, losses, _ = fused
  expected_server, m = None, 0
  for group, params, grads in zip(model.groups, cp, g_clients):
    for i in range(jax.tree.leaves(params)[0].shape[0]):
      one = lambda tree, i=i: jax.tree.map(lambda a: a[i], tree)
      loss_m, (gs_m, gc_m) = jax.value_and_grad(_single_task_loss, argnums=(1, 2))(
          group, sp, one(params), x[m], y[m], k[m])
      np.testing.assert_allclose(losses[m], loss_m, rtol=1e-6)
      _assert_trees_close(one(grads), gc_m)
      scaled = jax.tree.map(lambda g, wm=w[m]: wm * g, gs_m)
      expected_server = scaled if expected_server is None else jax.tree.map(
          jnp.add, expected_server, scaled)
      m += 1
  _assert_trees_close(g_server, expected_server)


def test_the_step_traces_once_and_its_program_does_not_grow_with_the_clients():
  config = _config("u_shaped", ((1, 0.5), (3, 2.0)))
  validation.validate_config(config)
  federation, train_data = _federation()
  algorithm = algorithms.build_algorithm(config, federation)
  traces = []

  def counted_step(state, train_data):
    traces.append(1)
    return algorithm.step(state, train_data)

  step = jax.jit(counted_step)
  state = jax.jit(algorithm.init_state)()
  for _ in range(3):
    state, _ = step(state, train_data)
  assert len(traces) == 1 and int(state.step) == 3
  # Groups are vmapped: the program is the same size for 4 clients as for 40.
  model, sp, cp, x, y, k, w = _mixed_problem("u_shaped")
  big = dataclasses.replace(model, sizes=(10, 30))
  sp_big, cp_big = big.init(jax.random.PRNGKey(0), (12,), 40)
  tile = lambda a: jnp.tile(a, (10,) + (1,) * (a.ndim - 1))
  eqns = lambda *args: len(jax.make_jaxpr(functools.partial(
      split_gradients.fused_gradients, args[0]))(*args[1:]).eqns)
  assert eqns(model, sp, cp, x, y, k, w) == eqns(big, sp_big, cp_big, tile(x), tile(y),
                                                 tile(k), tile(w) / 10)


@pytest.mark.parametrize("change,message", [
    (dict(groups=((2, 1.0), (1, 0.5))), "sum to data.num_clients (4)"),
    (dict(groups=((2, 1.0), (2, 0.0))), "width_multiplier a number > 0"),
    (dict(groups=((2, 1.0), (2,))), "(num_clients, width_multiplier) pairs"),
    (dict(groups=(4, 1.0)), "(num_clients, width_multiplier) pairs"),
    (dict(algorithm="fedavg"), "only 'mtsl'"),
    (dict(algorithm="splitfed_v1"), "only 'mtsl'"),
    (dict(cuts=(1, 1)), "no block of free width"),
    (dict(client_devices=2), "sharded over devices"),
])
def test_bad_client_width_groups_are_config_errors(change, message):
  config = _config("u_shaped", change.get("groups", ((2, 1.0), (2, 0.5))))
  config.algorithm = change.get("algorithm", "mtsl")
  config.split.client_bottom_blocks, config.split.client_top_blocks = change.get("cuts", (2, 1))
  config.parallel.client_devices = change.get("client_devices", 1)
  with pytest.raises(validation.ConfigError, match="^config.model.client_width_groups: ") as e:
    validation.validate_config(config)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_resnet_with_groups_is_a_config_error():
  config = load_config("test")
  config.data.source, config.model.name = "tfds", "resnet"
  config.split.client_bottom_blocks = 2
  config.model.client_width_groups = ((2, 1.0), (2, 0.5))
  with pytest.raises(validation.ConfigError, match="model.name 'resnet'"):
    validation.validate_config(config)


def test_tools_built_on_one_client_architecture_refuse_groups():
  config = _config("u_shaped", ((2, 1.0), (2, 0.5)))
  federation, _ = _federation()
  with pytest.raises(validation.ConfigError, match="learning-rate study"):
    lr_study.run_study(config, [0.1], [0.1], eval_every=1, target=0.5)
  with pytest.raises(validation.ConfigError, match="smoothness estimate"):
    smoothness.config_smoothness(config, federation, state=None, batch_size=8)


def test_a_mixed_width_run_trains_evaluates_and_resumes_exactly(tmp_path):
  config = _config("u_shaped", ((1, 0.5), (3, 2.0)))
  full = train.train_and_evaluate(config, tmp_path / "full", verbose=False)
  losses = [r["loss"] for r in metric_writers.read_metrics(tmp_path / "full") if "loss" in r]
  assert losses[-1] < 0.8 * losses[0]
  assert len(full.eval_metrics["test/accuracy"]) == 4
  assert full.train_metrics["client/param_norm"].shape == (4,)
  assert set(full.algorithm.param_counts) >= {"client_bottom (each, group 0)",
                                              "client_bottom (each, group 1)"}
  # The smashed data and cut gradients have the configured shapes whatever the widths, and
  # client parameters never travel: the ledger equals the single-architecture run's.
  single = algorithms.build_algorithm(_config("u_shaped"), _federation()[0])
  np.testing.assert_array_equal(full.algorithm.traffic.uplink_M, single.traffic.uplink_M)
  np.testing.assert_array_equal(full.algorithm.traffic.downlink_M, single.traffic.downlink_M)
  (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
  shutil.copytree(tmp_path / "full" / "checkpoints" / "20",
                  tmp_path / "resumed" / "checkpoints" / "20")
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", verbose=False)
  assert int(resumed.state.step) == 40 and isinstance(resumed.state.clients.params, tuple)
  for u, v in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  assert resumed.eval_metrics["test/accuracy"].tolist() == (
      full.eval_metrics["test/accuracy"].tolist())
