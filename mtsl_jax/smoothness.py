"""Block smoothness constants of the MTSL objective, by Hessian-vector power iteration.

The step-size theory of docs/theory.md is stated in terms of the blocks of the Hessian of

    f(φ, ψ_1..ψ_M) = Σ_m w_m f_m(φ, ψ_m)

at a given point (parameters) on a given fixed batch:

  * L_φ = max |eigenvalue| of ∇²_φφ f (the server block of the weighted objective);
  * L_m = max |eigenvalue| of ∇²_ψmψm f_m (client m's block of its OWN loss, matching the
    unscaled-client convention of `split_gradients.py`);
  * ρ_m = ||∇²_φψm f_m||_2 (largest singular value of the cross block of task m);
  * Λ(η_s, η_c) = max |eigenvalue| of P^½ ∇²f P^½, P = diag(η_s I, η_c,m / w_m I): the
    sharpness of the objective in the metric of the MTSL step; Λ < 2 guarantees descent
    (docs/theory.md, Lemma 1) and is exactly the stability condition on a convex quadratic.

Every matrix is touched only through Hessian-vector products (`jax.jvp` over `jax.grad`),
so the cost of one power-iteration step is a few forward/backward passes, for any model.
The functions take a per-task loss `task_loss(φ, ψ_m, batch_m) -> f_m`; `split_task_loss`
builds it from a `split_model.SplitModel` (masked cross-entropy), tests build quadratics, and
`config_smoothness` measures everything for an experiment config and a state.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data
from mtsl_jax import split_gradients
from mtsl_jax import split_model
from mtsl_jax import split_state
from mtsl_jax import validation
from mtsl_jax.algorithms import mtsl

PyTree = Any
TaskLoss = Callable[[PyTree, PyTree, PyTree], jax.Array]


@flax.struct.dataclass
class BlockSmoothness:
  """Block smoothness constants at one point (see the module docstring).

  Attributes:
    server: L_φ, scalar.
    clients: L_m, [M].
    cross: ρ_m, [M].
  """
  server: jax.Array
  clients: jax.Array
  cross: jax.Array


def split_task_loss(model: split_model.SplitModel) -> TaskLoss:
  """The loss of one task of a split model, as `task_loss(φ, ψ_m, (x_m, y_m, k_m))`.

  Args:
    model: the split model; ψ_m is one client's (unstacked) parameters.

  Returns:
    A function of (server params, one client's params, (x [B, ...], y [B], num_classes))
    returning the scalar masked cross-entropy f_m on that batch.
  """
  def task_loss(server_params, client_params_m, batch_m):
    x, y, k = batch_m
    # A client axis of size one reuses the library's own forward pass unchanged.
    stacked = jax.tree.map(lambda a: a[None], client_params_m)
    losses, _ = split_gradients.per_task_losses(model, server_params, stacked, x[None],
                                                y[None], jnp.reshape(k, (1,)))
    return losses[0]

  return task_loss


def objective(task_loss: TaskLoss, server_params: PyTree, client_params: PyTree,
              batch: PyTree, weights_M: jax.Array) -> jax.Array:
  """f = Σ_m w_m f_m(φ, ψ_m); client params and batch leaves have a leading axis M."""
  losses = jax.vmap(task_loss, in_axes=(None, 0, 0))(server_params, client_params, batch)
  return jnp.sum(weights_M * losses)


def mtsl_gradients(task_loss: TaskLoss, server_params: PyTree, client_params: PyTree,
                   batch: PyTree, weights_M: jax.Array) -> tuple[PyTree, PyTree]:
  """The MTSL gradients of `split_gradients.py`'s convention for any per-task loss.

  Args:
    task_loss: per-task loss.
    server_params: φ.
    client_params: stacked ψ, leading axis M.
    batch: per-client data, leading axis M.
    weights_M: task weights w_m.

  Returns:
    (Σ_m w_m ∇_φ f_m, stacked ∇_ψm f_m): the server's weighted gradient and every client's
    gradient of its own loss, unscaled; equal to `split_gradients.fused_gradients` on a
    split model (tested).
  """
  g_server = jax.grad(objective, argnums=1)(task_loss, server_params, client_params, batch,
                                             weights_M)
  g_clients = jax.vmap(jax.grad(task_loss, argnums=1), in_axes=(None, 0, 0))(
      server_params, client_params, batch)
  return g_server, g_clients


def _normalize(tree: PyTree) -> PyTree:
  return optax.tree.scale(1.0 / (optax.tree.norm(tree) + 1e-30), tree)


def power_iteration(matvec: Callable[[PyTree], PyTree], init: PyTree,
                    num_iters: int) -> tuple[jax.Array, PyTree]:
  """Dominant eigenpair of a symmetric linear operator given only as `matvec`.

  Args:
    matvec: v -> A v on pytrees shaped like `init` (A symmetric).
    init: a nonzero starting vector (random, so it is not orthogonal to the answer).
    num_iters: power steps; the error shrinks like (|λ_2| / |λ_1|)^num_iters.

  Returns:
    (λ, v): the Rayleigh quotient vᵀAv of the final unit vector, signed, so |λ| estimates
    the largest |eigenvalue| (from below), and v.
  """
  v = jax.lax.fori_loop(0, num_iters, lambda _, v: _normalize(matvec(v)), _normalize(init))
  return optax.tree.vdot(v, matvec(v)), v


def hvp(fn: Callable[[PyTree], jax.Array], primal: PyTree, tangent: PyTree) -> PyTree:
  """∇²fn(primal) · tangent by forward-over-reverse differentiation."""
  return jax.jvp(jax.grad(fn), (primal,), (tangent,))[1]


def block_smoothness(task_loss: TaskLoss, server_params: PyTree, client_params: PyTree,
                     batch: PyTree, weights_M: jax.Array, key: jax.Array,
                     num_iters: int = 100) -> BlockSmoothness:
  """L_φ, L_m and ρ_m at (φ, ψ) on a fixed batch, by power iteration.

  Args:
    task_loss: per-task loss `(φ, ψ_m, batch_m) -> f_m`.
    server_params: φ.
    client_params: stacked ψ, leading axis M.
    batch: per-client data, leading axis M (a fixed minibatch, or all of each client's
      data for the full objective).
    weights_M: task weights w_m.
    key: PRNG key for the starting vectors.
    num_iters: power-iteration steps per constant.

  Returns:
    BlockSmoothness; every client's constants are computed at once (vmapped).
  """
  k_s, k_c = jax.random.split(key)
  f_server = lambda p: objective(task_loss, p, client_params, batch, weights_M)
  lam_s, _ = power_iteration(lambda v: hvp(f_server, server_params, v),
                             optax.tree.random_like(k_s, server_params), num_iters)

  def client_constants(psi_m, batch_m, key_m):
    k1, k2 = jax.random.split(key_m)
    f_own = lambda q: task_loss(server_params, q, batch_m)
    lam_m, _ = power_iteration(lambda v: hvp(f_own, psi_m, v),
                               optax.tree.random_like(k1, psi_m), num_iters)
    # ρ_m² is the top eigenvalue of C_mᵀC_m, C_m = ∇²_φψm f_m : ψ-space -> φ-space.
    grad_phi = lambda q: jax.grad(task_loss, argnums=0)(server_params, q, batch_m)
    grad_psi = lambda p: jax.grad(task_loss, argnums=1)(p, psi_m, batch_m)
    c = lambda v: jax.jvp(grad_phi, (psi_m,), (v,))[1]
    c_t = lambda u: jax.jvp(grad_psi, (server_params,), (u,))[1]
    rho_sq, _ = power_iteration(lambda v: c_t(c(v)), optax.tree.random_like(k2, psi_m),
                                num_iters)
    return jnp.abs(lam_m), jnp.sqrt(jnp.maximum(rho_sq, 0.0))

  num_clients = weights_M.shape[0]
  lam_c, rho = jax.vmap(client_constants)(client_params, batch,
                                          jax.random.split(k_c, num_clients))
  return BlockSmoothness(server=jnp.abs(lam_s), clients=lam_c, cross=rho)


def preconditioned_sharpness(task_loss: TaskLoss, server_params: PyTree,
                             client_params: PyTree, batch: PyTree, weights_M: jax.Array,
                             server_lr: float, client_lrs_M: jax.Array, key: jax.Array,
                             num_iters: int = 100) -> jax.Array:
  """Λ = max |eigenvalue| of P^½ ∇²f P^½ with the MTSL step's P, by power iteration.

  One MTSL SGD step is θ ← θ − P∇f with P = diag(η_s on φ, η_c,m / w_m on ψ_m) (client m
  steps on its own loss, ∇_ψm f_m = ∇_ψm f / w_m). Λ < 2 along the step is the descent
  condition of docs/theory.md; on a quadratic it is exact.

  Args:
    task_loss, server_params, client_params, batch, weights_M, key, num_iters: as in
      `block_smoothness`.
    server_lr: η_s.
    client_lrs_M: η_c,m per client (the client learning rate times its multiplier).

  Returns:
    Λ, a scalar (the absolute value of the dominant eigenvalue).
  """
  scale_s = jnp.sqrt(server_lr)
  scale_c = jnp.sqrt(jnp.asarray(client_lrs_M) / weights_M)

  def f_scaled(u):
    u_s, u_c = u
    return objective(task_loss, optax.tree.add(server_params, optax.tree.scale(scale_s, u_s)),
                     optax.tree.add(client_params, split_state.scale_clients(u_c, scale_c)),
                     batch, weights_M)

  zero = (optax.tree.zeros_like(server_params), optax.tree.zeros_like(client_params))
  lam, _ = power_iteration(lambda v: hvp(f_scaled, zero, v),
                           optax.tree.random_like(key, zero), num_iters)
  return jnp.abs(lam)


def config_smoothness(config, federation, state: split_state.SplitState, batch_size: int,
                      num_iters: int = 100, seed: int = 0) -> dict[str, Any]:
  """Block constants and the sharpness of the configured rates for an MTSL config.

  Args:
    config: a validated MTSL experiment config (its model, split, task weights and the
      two optimizers' learning rates and client multipliers are used).
    federation: the built `data.Federation`.
    state: a `split_state.SplitState` (the initial state or a restored checkpoint).
    batch_size: examples per client of the fixed batch the constants are measured on,
      drawn uniformly with replacement from each client's train data.
    num_iters: power-iteration steps per constant.
    seed: seed of the fixed batch and the starting vectors.

  Returns:
    A dict of host values: 'constants' (BlockSmoothness), 'weights' [M], 'server_lr',
    'client_lrs' [M] (learning rate times multiplier) and 'sharpness' (Λ of those rates).
  """
  validation.require_one_client_architecture(config, "the smoothness estimate")
  # The model, task weights and learning-rate multipliers training uses.
  ctx = mtsl.make_step_context(config, federation)
  weights = ctx.weights_M
  train, _ = data.to_device(federation)
  key_batch, key_consts, key_sharp = jax.random.split(jax.random.PRNGKey(seed), 3)
  x, y = data.sample_batches(train, key_batch, batch_size)
  batch = (x, y, ctx.num_classes_M)
  server_lr = float(config.server_optimizer.learning_rate)
  client_lrs = config.client_optimizer.learning_rate * ctx.lr_multipliers_M
  task_loss = split_task_loss(ctx.split)
  sp, cp = state.server.params, state.clients.params

  @jax.jit
  def measure(sp, cp):
    consts = block_smoothness(task_loss, sp, cp, batch, weights, key_consts, num_iters)
    lam = preconditioned_sharpness(task_loss, sp, cp, batch, weights, server_lr, client_lrs,
                                   key_sharp, num_iters)
    return consts, lam

  consts, lam = jax.device_get(measure(sp, cp))
  return {"constants": consts, "weights": jax.device_get(weights), "server_lr": server_lr,
          "client_lrs": jax.device_get(client_lrs), "sharpness": float(lam)}
