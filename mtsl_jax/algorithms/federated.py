"""One federated round, written once: FedAvg, FedRep, FedEM and SplitFed fill it in.

A round (`make_round_step`) is always the same five things:

  1. sample S = max(1, round(fraction M)) clients uniformly without replacement, on the
     device (`methods.num_sampled`, `sample_clients`);
  2. every client's local work (`ClientWork`), vmapped over ALL M clients: unsampled
     clients' work is discarded (masked out of every average), which keeps shapes static
     and costs M instead of S clients' compute per round, what a simulation on one
     accelerator can afford for the client counts used here;
  3. aggregation of what the sampled clients upload into the server's model;
  4. the round's metrics (`round_metrics`): per-task loss and accuracy over the local
     steps a client took, the objective on the minibatches used, the participation;
  5. finiteness flags: each sampled client's work and the server's new model.

A method supplies steps 2 and 3 (and where its randomness comes from); the rest is here.
Aggregation is usually the FedOpt form (Reddi et al. 2021, `server_step`,
`fedopt_aggregate`): the weighted mean of the sampled clients' deltas θ_m - θ, weights
w_m (`config.fl.aggregation_weights`, `base.aggregation_weights`: n_m / Σ n by default)
renormalized over the sampled clients, is negated and given to the server optimizer as
a pseudo-gradient; server SGD with learning rate 1 is plain FedAvg. SplitFed averages its
client-side models instead (`weighted_mean`).

Local work comes in one of two forms: K = `config.fl.local_steps` minibatches per client
drawn with replacement (`draw_round_batches`), or, with `config.fl.local_epochs` = E > 0,
E passes over each client's own examples without replacement (`round_epochs`), every
client running the largest client's step count K with its own steps beyond ceil(n_m / B)
x E masked (`local_training.EpochPlan`). FedAvg packs unequal clients' epochs onto fewer
lanes instead (`epoch_lanes`), computing no masked steps; FedRep, FedEM and SplitFed,
whose rounds have more structure, still run them in lock-step.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data, split_state, task_losses
from mtsl_jax.algorithms import local_training

PyTree = Any

# FedAvg, FedRep and FedEM draw round t's randomness from `fold_in(rng, t)`, one stream
# per use: the clients' minibatches from stream 0, the client sample from stream 1.
BATCH_STREAM = 0
SAMPLE_STREAM = 1


def round_key(state, stream: int) -> jax.Array:
  """Key of one random stream of the round `state` is at: `fold_in(fold_in(rng, t), stream)`.

  Args:
    state: a method's state, with `rng` (the run's base key) and `step` (rounds taken).
    stream: which use of randomness (BATCH_STREAM, SAMPLE_STREAM, or a method's own).

  Returns:
    The key.
  """
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), stream)


def round_sample_key(state) -> jax.Array:
  """Key of the round's client sample (stream SAMPLE_STREAM of `round_key`)."""
  return round_key(state, SAMPLE_STREAM)


def draw_round_batches(state, train_data: data.ClientArrays, num_steps: int, batch_size: int,
                       stream: int = BATCH_STREAM) -> tuple[jax.Array, jax.Array]:
  """Every client's minibatches for `num_steps` local steps of this round.

  Args:
    state: the method's state (its `rng` and `step` give the key).
    train_data: padded client arrays.
    num_steps: K.
    batch_size: B.
    stream: the round's random stream to draw from.

  Returns:
    (x [M, K, B, ...], y [M, K, B]), see `local_training.draw_batches`.
  """
  return local_training.draw_batches(train_data, round_key(state, stream), num_steps,
                                     batch_size)


def local_steps(config, federation) -> int:
  """K, the local steps of a round: `fl.local_steps`, or with `fl.local_epochs` > 0 the
  largest client's ceil(n_m / B) x E (`local_training.max_epoch_steps`)."""
  if config.fl.local_epochs:
    return local_training.max_epoch_steps(federation.train_counts, config.batch_size,
                                          config.fl.local_epochs)
  return config.fl.local_steps


def round_epochs(state, train_data: data.ClientArrays, num_steps: int, batch_size: int,
                 epochs: int, key: jax.Array | None = None) -> local_training.EpochPlan:
  """Every client's `epochs` passes over its own examples this round (`plan_epochs`).

  Args:
    state: the method's state (its `rng` and `step` give the key unless `key` is given).
    train_data: padded client arrays.
    num_steps: K, from `local_steps`.
    batch_size: B.
    epochs: E.
    key: the round's batch key; by default stream BATCH_STREAM of `round_key` (the stream
      the with-replacement minibatches would come from).

  Returns:
    The EpochPlan [M, K, B].
  """
  key = round_key(state, BATCH_STREAM) if key is None else key
  return local_training.plan_epochs(train_data.counts, key, train_data.y.shape[1], num_steps,
                                    batch_size, epochs)


class ClientWork(NamedTuple):
  """Every client's part of one round, each leaf with a leading client axis M.

  Attributes:
    uploads: what each client sends the server to aggregate: its model after local
      training (FedAvg), its body (FedRep), its components (FedEM), its client-side model
      (SplitFed).
    kept: what each client keeps for its next rounds: FedRep's head, FedEM's mixture
      weights; () when nothing.
    losses: each local step's loss, [M, K] (a method with one loss per round: [M, 1]).
    accuracies: the matching accuracies.
    server_side: the server's work of the round, for SplitFed (its server-side model
      after the round's split steps); () otherwise.
    step_mask: None when every client took every step; with local epochs bool [M, K],
      the steps each client took (the others count in no metric).
  """
  uploads: PyTree
  kept: PyTree
  losses: jax.Array
  accuracies: jax.Array
  server_side: PyTree = ()
  step_mask: jax.Array | None = None


LocalWork = Callable[[PyTree, data.ClientArrays, jax.Array], ClientWork]
Aggregate = Callable[[PyTree, ClientWork, jax.Array], tuple[PyTree, dict]]


def make_round_step(num_clients: int, sampled: int, weights_M: jax.Array,
                    local_work: LocalWork, aggregate: Aggregate,
                    sample_key: Callable[[PyTree], jax.Array] = round_sample_key) -> Callable:
  """Builds `step(state, train_data) -> (state, metrics)`: one federated round.

  Args:
    num_clients: M.
    sampled: S, clients per round.
    weights_M: aggregation weights w_m.
    local_work: `(state, train_data, mask_M) -> ClientWork` of every client, vmapped over
      all M (the unsampled clients' work is discarded).
    aggregate: `(state, work, mask_M) -> (state, metrics)`: the state with the server's
      (and the clients' kept) new parts, and the server's metrics. It does not advance
      `step`; the round does.
    sample_key: `state -> key` of the round's client sample (by default stream
      SAMPLE_STREAM of `round_key`).

  Returns:
    The pure step. Its metrics hold the aggregate's, `round_metrics`', and the flags
    'finite/clients' (each sampled client's uploads, kept state and losses) and
    'finite/server' (the server's new parameters).
  """
  def step(state, train_data):
    mask = sample_clients(sample_key(state), num_clients, sampled)
    work = local_work(state, train_data, mask)
    new_state, server_metrics = aggregate(state, work, mask)
    metrics = dict(server_metrics,
                   **round_metrics(work.losses, work.accuracies, weights_M, mask,
                                   work.step_mask))
    metrics["finite/clients"] = client_finite((work.uploads, work.kept), work.losses, mask)
    metrics["finite/server"] = split_state.all_finite(new_state.server.params)
    return new_state.replace(step=state.step + 1), metrics

  return step


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
    weights_M: aggregation weights w_m.
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


def fedopt_aggregate(tx: optax.GradientTransformation, weights_M: jax.Array) -> Aggregate:
  """The `aggregate` of a method whose clients upload the server's model: `server_step`.

  Args:
    tx: the server optimizer.
    weights_M: aggregation weights w_m.

  Returns:
    `(state, work, mask_M) -> (state with the new server, server_step's metrics)`.
  """
  def aggregate(state, work: ClientWork, mask_M: jax.Array):
    server, health = server_step(tx, state.server, work.uploads, weights_M, mask_M)
    return state.replace(server=server), health

  return aggregate


def keep_unsampled(new_M: PyTree, old_M: PyTree, mask_M: jax.Array) -> PyTree:
  """Per-client state after a round: the new one for sampled clients, the old otherwise.

  Args:
    new_M: every client's state after its local work, leading axis M.
    old_M: the state before the round, laid out the same.
    mask_M: the sampled clients.

  Returns:
    The merged tree.
  """
  return jax.tree.map(
      lambda new, old: jnp.where(mask_M.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
      new_M, old_M)


def client_finite(tree_M: PyTree, losses_M: jax.Array, mask_M: jax.Array) -> jax.Array:
  """Per-client finiteness of the work that counts; unsampled clients' work is discarded."""
  ok = jax.vmap(split_state.all_finite)(tree_M) & jnp.all(jnp.isfinite(losses_M.reshape(
      (losses_M.shape[0], -1))), axis=1)
  return ok | ~mask_M


def round_metrics(losses_MxK: jax.Array, accs_MxK: jax.Array, weights_M: jax.Array,
                  mask_M: jax.Array, step_mask_MxK: jax.Array | None = None) -> dict:
  """'task_loss', 'task_accuracy' (means over the round's local steps) and 'loss'.

  'loss' is the w-weighted mean over the sampled clients, i.e. the objective on the
  minibatches that were actually used. With a step mask (local epochs) each client's
  means run over the steps it took only.
  """
  if step_mask_MxK is None:
    task_loss, task_acc = losses_MxK.mean(axis=1), accs_MxK.mean(axis=1)
  else:
    task_loss = task_losses.masked_mean(losses_MxK, step_mask_MxK, axis=1)
    task_acc = task_losses.masked_mean(accs_MxK, step_mask_MxK, axis=1)
  w = renormalized_weights(weights_M, mask_M)
  return {"task_loss": task_loss, "task_accuracy": task_acc,
          "loss": jnp.sum(w * jnp.where(mask_M, task_loss, 0.0)),
          "participation": mask_M.astype(jnp.float32).mean()}
