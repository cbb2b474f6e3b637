"""The server side of a federated round: client sampling, weighted averaging, server step.

Shared by FedAvg, FedRep, FedEM and SplitFed. A round samples S = max(1, round(fraction
M)) clients uniformly without replacement (on the device). Every client's local work is
vmapped over ALL M clients and the unsampled ones are masked out of the average (their
work is discarded): this keeps shapes static and costs M instead of S clients' compute per
round, which is what a simulation on one accelerator can afford for the client counts
used here.

Aggregation is the FedOpt form (Reddi et al. 2021): the weighted mean of the sampled
clients' deltas θ_m - θ, weights w_m (config.split.task_weights) renormalized over the
sampled clients, is negated and given to the server optimizer as a pseudo-gradient; server
SGD with learning rate 1 is plain FedAvg.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

from mtsl_jax import split_state

PyTree = Any


def sample_clients(key: jax.Array, num_clients: int, sampled: int) -> jax.Array:
  """A bool [M] mask of `sampled` clients drawn uniformly without replacement."""
  if sampled >= num_clients:
    return jnp.ones((num_clients,), bool)
  chosen = jax.random.permutation(key, num_clients)[:sampled]
  return jnp.zeros((num_clients,), bool).at[chosen].set(True)


def renormalized_weights(weights_M: jax.Array, mask_M: jax.Array) -> jax.Array:
  """w_m over the sampled clients, summing to one; 0 for the unsampled."""
  w = jnp.where(mask_M, weights_M, 0.0)
  return w / jnp.sum(w)


def weighted_mean(trees_M: PyTree, weights_M: jax.Array, mask_M: jax.Array) -> PyTree:
  """Σ_m w̃_m tree_m over the sampled clients (leaves have a leading client axis).

  Unsampled clients are removed with `where`, not by a zero weight, so a non-finite value
  in discarded work cannot leak into the average.
  """
  w = renormalized_weights(weights_M, mask_M)

  def mean(leaf):
    keep = mask_M.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return jnp.einsum("m,m...->...", w.astype(leaf.dtype), jnp.where(keep, leaf, 0))

  return jax.tree.map(mean, trees_M)


def server_step(tx: optax.GradientTransformation, server: split_state.SideState,
                client_params_M: PyTree, weights_M: jax.Array,
                mask_M: jax.Array) -> tuple[split_state.SideState, dict]:
  """Aggregates the sampled clients' models into the global one (FedOpt).

  Args:
    tx: the server optimizer.
    server: the global parameters and the server optimizer state.
    client_params_M: every client's parameters after local training, leading axis M.
    weights_M: task weights w_m.
    mask_M: the sampled clients.

  Returns:
    (new server SideState, health metrics).
  """
  deltas = jax.tree.map(lambda p, g: p - g[None], client_params_M, server.params)
  pseudo_grad = jax.tree.map(jnp.negative, weighted_mean(deltas, weights_M, mask_M))
  updates, opt_state = tx.update(pseudo_grad, server.opt_state, server.params)
  new = split_state.SideState(optax.apply_updates(server.params, updates), opt_state)
  return new, {"server/pseudo_grad_norm": optax.tree.norm(pseudo_grad),
               "server/update_norm": optax.tree.norm(updates),
               "server/param_norm": optax.tree.norm(new.params)}


all_finite = split_state.all_finite


def client_finite(tree_M: PyTree, losses_M: jax.Array, mask_M: jax.Array) -> jax.Array:
  """Per-client finiteness of the work that counts; unsampled clients' work is discarded."""
  ok = jax.vmap(all_finite)(tree_M) & jnp.all(jnp.isfinite(losses_M.reshape(
      (losses_M.shape[0], -1))), axis=1)
  return ok | ~mask_M


def round_metrics(losses_MxK: jax.Array, accs_MxK: jax.Array, weights_M: jax.Array,
                  mask_M: jax.Array) -> dict:
  """'task_loss', 'task_accuracy' (means over the round's local steps) and 'loss'.

  'loss' is the w-weighted mean over the sampled clients, i.e. the objective on the
  minibatches that were actually used.
  """
  task_loss, task_acc = losses_MxK.mean(axis=1), accs_MxK.mean(axis=1)
  w = renormalized_weights(weights_M, mask_M)
  return {"task_loss": task_loss, "task_accuracy": task_acc,
          "loss": jnp.sum(w * jnp.where(mask_M, task_loss, 0.0)),
          "participation": mask_M.astype(jnp.float32).mean()}


