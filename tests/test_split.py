"""Exact checks of the MTSL step: the gradient convention, both implementations, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtsl_jax import config_base, optimizers, split, split_gradients, split_model
from mtsl_jax import split_state, task_losses

M, B, D, C = 4, 6, 12, 5
CUTS = {"bottom": (1, 0), "top": (0, 1), "u_shaped": (1, 1)}


def _problem(orientation, varying_classes=True):
  """A tiny split MLP, one minibatch per client, non-uniform task weights."""
  c = config_base.base_config()
  c.model.hidden_sizes = (8, 7)
  c.split.orientation = orientation
  c.split.client_bottom_blocks, c.split.client_top_blocks = CUTS[orientation]
  model = split_model.make_split_model(c.model, c.split, C)
  sp, cp = split_model.init_params(model, jax.random.PRNGKey(0), (D,), M)
  x = jax.random.normal(jax.random.PRNGKey(1), (M, B, D))
  num_classes = jnp.array([5, 3, 5, 2] if varying_classes else [C] * M)
  y = jax.random.randint(jax.random.PRNGKey(2), (M, B), 0, num_classes[:, None])
  weights = jnp.array([0.1, 0.2, 0.3, 0.4])
  return model, sp, cp, x, y, num_classes, weights


def _client(tree, m):
  return jax.tree.map(lambda a: a[m], tree)


def _single_task_loss(model, sp, cp_m, x_m, y_m, k):
  """f_m computed for one task alone, without vmap or stacking."""
  h = model.bottom.apply(cp_m["bottom"], x_m) if model.client_has_bottom else x_m
  h = model.server.apply(sp, h)
  logits = h if model.server_computes_loss else model.top.apply(cp_m["top"], h)
  return task_losses.masked_cross_entropy(logits, y_m, k)


def _assert_trees_close(a, b, atol=1e-6, rtol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=rtol)


def test_masked_cross_entropy_equals_cross_entropy_on_the_task_classes():
  logits = jnp.array([[2.0, -1.0, 0.5, 9.0, -3.0]])
  expected = -jax.nn.log_softmax(logits[:, :3])[0, 2]
  got = task_losses.masked_cross_entropy(logits, jnp.array([2]), 3)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # The masked logits get exactly zero gradient.
  g = jax.grad(lambda l: task_losses.masked_cross_entropy(l, jnp.array([2]), 3))(logits)
  assert np.all(np.asarray(g[0, 3:]) == 0)


@pytest.mark.parametrize("orientation", list(CUTS))
def test_fused_equals_protocol(orientation):
  model, sp, cp, x, y, k, w = _problem(orientation)
  fused = split_gradients.fused_gradients(model, sp, cp, x, y, k, w)
  protocol = split_gradients.protocol_gradients(model, sp, cp, x, y, k, w)
  _assert_trees_close(fused, protocol[:4])


@pytest.mark.parametrize("orientation", list(CUTS))
def test_gradients_match_one_task_at_a_time(orientation):
  """Server: Σ_m w_m ∇φ f_m. Client m: ∇ψm f_m of its own loss, not scaled by w_m."""
  model, sp, cp, x, y, k, w = _problem(orientation)
  g_server, g_clients, losses, _ = split_gradients.fused_gradients(model, sp, cp, x, y, k, w)
  expected_server = None
  for m in range(M):
    loss_m, (gs_m, gc_m) = jax.value_and_grad(_single_task_loss, argnums=(1, 2))(
        model, sp, _client(cp, m), x[m], y[m], k[m])
    np.testing.assert_allclose(losses[m], loss_m, rtol=1e-6)
    _assert_trees_close(_client(g_clients, m), gc_m)
    scaled = jax.tree.map(lambda g, wm=w[m]: wm * g, gs_m)
    expected_server = scaled if expected_server is None else jax.tree.map(
        jnp.add, expected_server, scaled)
  _assert_trees_close(g_server, expected_server)


@pytest.mark.parametrize("orientation", list(CUTS))
def test_a_clients_loss_gives_exactly_zero_gradient_to_other_clients(orientation):
  model, sp, cp, x, y, k, _ = _problem(orientation)
  for j in range(M):
    loss_j = lambda cp, j=j: split_gradients.per_task_losses(model, sp, cp, x, y, k)[0][j]
    grads = jax.grad(loss_j)(cp)
    for i in range(M):
      leaves = [np.asarray(g[i]) for g in jax.tree.leaves(grads)]
      if i == j:
        assert any(np.any(l != 0) for l in leaves)
      else:
        assert all(np.all(l == 0) for l in leaves), (i, j)


def test_vmapped_step_equals_a_per_client_loop():
  """One full step (momentum on both sides, per-client LR multipliers) against a loop."""
  model, sp, cp, x, y, k, w = _problem("u_shaped")
  opt = config_base.optimizer_config("momentum", 0.3)
  server_tx = optimizers.make_optimizer(opt, 10)
  client_tx = optimizers.make_optimizer(config_base.optimizer_config("adam", 0.01), 10)
  multipliers = jnp.array([1.0, 0.5, 2.0, 1.5])
  ctx = split.StepContext(model, server_tx, client_tx, k, w, multipliers, B)
  state = split_state.SplitState(
      step=jnp.array(0), rng=jax.random.PRNGKey(3),
      server=split_state.SideState(sp, server_tx.init(sp)),
      clients=split_state.SideState(cp, jax.vmap(client_tx.init)(cp)))
  # Two steps, so the optimizer states matter too.
  expected_sp, expected_s_opt = sp, server_tx.init(sp)
  expected_cp = [_client(cp, m) for m in range(M)]
  expected_c_opt = [client_tx.init(p) for p in expected_cp]
  for _ in range(2):
    g_s, g_c, _, _ = ctx.gradients(state.server.params, state.clients.params, x, y)
    state, _ = split.apply_gradients(ctx, state, g_s, g_c)
    server_grad = None
    for m in range(M):
      gs_m, gc_m = jax.grad(_single_task_loss, argnums=(1, 2))(
          model, expected_sp, expected_cp[m], x[m], y[m], k[m])
      scaled = jax.tree.map(lambda g, wm=w[m]: wm * g, gs_m)
      server_grad = scaled if server_grad is None else jax.tree.map(jnp.add, server_grad, scaled)
      upd, expected_c_opt[m] = client_tx.update(gc_m, expected_c_opt[m], expected_cp[m])
      upd = jax.tree.map(lambda u, s=multipliers[m]: s * u, upd)
      expected_cp[m] = optax.apply_updates(expected_cp[m], upd)
    upd, expected_s_opt = server_tx.update(server_grad, expected_s_opt, expected_sp)
    expected_sp = optax.apply_updates(expected_sp, upd)
  _assert_trees_close(state.server.params, expected_sp)
  for m in range(M):
    _assert_trees_close(_client(state.clients.params, m), expected_cp[m])
  assert int(state.step) == 2


def test_every_client_gets_its_own_initialization():
  model, sp, cp, *_ = _problem("u_shaped")
  kernels = cp["bottom"]["params"]["blocks_0"]["Dense_0"]["kernel"]
  assert not np.allclose(kernels[0], kernels[1])


def test_clients_initialize_in_batches_each_by_its_own_key(monkeypatch):
  # More clients than one initialization batch (with a remainder): client m's parameters
  # are those it gets alone, from its own index.
  monkeypatch.setattr(split_model, "INIT_CLIENTS_PER_BATCH", 4)
  model = _problem("u_shaped")[0]
  sp, cp = split_model.init_params(model, jax.random.PRNGKey(0), (D,), 10)
  assert jax.tree.leaves(cp)[0].shape[0] == 10
  for m in (0, 3, 4, 9):
    sp_m, cp_m = split_model.init_params(model, jax.random.PRNGKey(0), (D,), 1, first_client=m)
    _assert_trees_close(sp_m, sp, atol=0, rtol=0)
    _assert_trees_close(_client(cp_m, 0), _client(cp, m), atol=0, rtol=0)
