"""SplitFed (Thapa et al., AAAI 2022), versions 1 and 2, as `Algorithm`s.

The model is cut exactly as MTSL cuts it (`config.split`, any orientation): every client
runs the client-side part (B, T) and the server the server-side part G. Unlike MTSL,
the client-side parts are FEDERATED: one global client-side model is broadcast at the
start of each round and the sampled clients' copies are averaged at its end (weights w_m
of `config.fl.aggregation_weights`, renormalized over the sampled clients). One loop step
is one round of `config.fl.local_steps` = K split steps per sampled client, or of
`config.fl.local_epochs` passes over each client's own examples (`federated.round_epochs`:
every client runs the largest client's K steps, its own beyond ceil(n_m / B) x E masked,
changing neither side's model nor optimizer state).

* v1 (`splitfed_v1`): the server keeps one copy of G per client, trained in parallel
  (vmapped) with that client's split steps, and averages the copies at the end of the
  round, like the client-side parts. Both sides' optimizers restart every round.
* v2 (`splitfed_v2`): ONE server-side G, updated by the sampled clients in turn (a
  `lax.scan` over the clients in a random order drawn each round, each doing its K split
  steps); its optimizer state persists across rounds. Client-side parts are still
  averaged each round.

A split step is MTSL's (`split_gradients.fused_gradients` / `protocol_gradients` on one
client):
split step j of the run draws its minibatches from `fold_in(rng, j)` exactly as MTSL's
step j, so with one client, K = 1 and SGD, v1 and v2 are MTSL (vanilla split learning).
With local epochs, round t's examples are ordered from `fold_in(fold_in(sample_rng, t), 2)`.

Ledger per round, per sampled client: K times the split-step messages (smashed data, cut
gradients, labels with a server-held head) plus the client-side model down and up; as
expected bytes per client with sampling (see `ledger.exchange_traffic`). With local
epochs, client m's split-step messages are counted for its E x n_m examples, E x n_m / B
full-batch steps' worth (a smaller last batch sends fewer rows).
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtsl_jax import data, ledger, methods, models, optimizers, split_gradients
from mtsl_jax import split_model, split_state, validation
from mtsl_jax.algorithms import federated, local_training
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import aggregation_weights
from mtsl_jax.algorithms.base import task_setup

PyTree = Any


@flax.struct.dataclass
class SplitFedState:
  """The state of SplitFed.

  Attributes:
    step: int32 scalar, rounds taken.
    rng: MTSL's base key; split step j draws minibatches with `fold_in(rng, j)`.
    sample_rng: base key of the per-round client sampling and order.
    server: global server-side parameters and (v2 only) the server optimizer state.
    client_params: the global client-side model {'bottom': ..., 'top': ...} (no client
      axis: it is averaged every round).
  """
  step: jax.Array
  rng: jax.Array
  sample_rng: jax.Array
  server: split_state.SideState
  client_params: PyTree


# Round t's client sample and (v2) the clients' order come from `fold_in(sample_rng, t)`,
# one stream each; the minibatches come from MTSL's keys (`rng`).
_SAMPLE_STREAM = 0
_ORDER_STREAM = 1
_EPOCH_STREAM = 2  # local epochs: the order of every client's examples


def _round_key(state: SplitFedState, stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state.sample_rng, state.step), stream)


def build_v1(config, federation: data.Federation) -> Algorithm:
  """SplitFed v1: per-client server-side copies trained in parallel, then averaged."""
  return _build(config, federation, version=1)


def build_v2(config, federation: data.Federation) -> Algorithm:
  """SplitFed v2: one server-side model updated by the clients in turn."""
  return _build(config, federation, version=2)


def _build(config, federation: data.Federation, version: int) -> Algorithm:
  """SplitFed from a validated config and its federation.

  Args:
    config: experiment config (model, split, fl, both optimizers, batch size, seed).
    federation: the clients' data.
    version: 1 or 2.

  Returns:
    An Algorithm whose state is a SplitFedState.
  """
  name = f"splitfed_v{version}"
  num_classes_M, num_clients, input_shape, _, classes = task_setup(config, federation)
  weights_M = aggregation_weights(config, federation)
  model = split_model.make_split_model(config.model, config.split, int(num_classes_M.max()))
  local_steps, epochs = federated.local_steps(config, federation), config.fl.local_epochs
  sampled = methods.num_sampled(config.fl.client_fraction, num_clients)
  if epochs:  # K was not known to validate_config
    validation.check_server_steps(config, local_steps)
  client_tx = optimizers.make_optimizer(config.client_optimizer, local_steps)
  # v1's server copies restart every round like the clients; v2's server model persists
  # and takes K steps per sampled client per round (at most K with local epochs: masked
  # steps do not advance the schedule).
  server_tx = optimizers.make_optimizer(
      config.server_optimizer,
      local_steps if version == 1 else config.num_steps * local_steps * sampled)
  gradients = (split_gradients.fused_gradients if config.split.implementation == "fused"
               else split_gradients.protocol_gradients)

  def init_state():
    root = jax.random.PRNGKey(config.seed)
    # As MTSL's initialization (split.init_state); the global client-side model is what
    # MTSL would give client 0.
    server_params, client_params = split_model.init_params(model, jax.random.fold_in(root, 0),
                                                           input_shape, 1)
    client_params = jax.tree.map(lambda p: p[0], client_params)
    opt_state = server_tx.init(server_params) if version == 2 else ()
    return SplitFedState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(root, 1),
                         sample_rng=jax.random.fold_in(root, 2),
                         server=split_state.SideState(server_params, opt_state),
                         client_params=client_params)

  def split_step(sp, cp, s_opt, c_opt, k, x, y, example_mask=None):
    """One split step of one client: x [B, ...], y [B]; returns updated parts and metrics."""
    mask = None if example_mask is None else example_mask[None]
    g_s, g_c, loss, acc = gradients(model, sp, optax.tree.batch_shape(cp, (1,)), x[None],
                                    y[None], k[None], jnp.ones((1,), jnp.float32), mask)[:4]
    g_c = jax.tree.map(lambda g: g[0], g_c)
    u_s, s_opt = server_tx.update(g_s, s_opt, sp)
    u_c, c_opt = client_tx.update(g_c, c_opt, cp)
    return (optax.apply_updates(sp, u_s), optax.apply_updates(cp, u_c), s_opt, c_opt,
            loss[0], acc[0])

  def client_round(sp, cp, s_opt, batches, k):
    """K split steps of one client from the given server-side state and client model.

    `batches` is (x [K, B, ...], y [K, B]), or with local epochs (x [N, ...], y [N], the
    client's EpochPlan): a masked step leaves both sides and their optimizers as they were.
    """
    def one(carry, batch):
      sp, cp, s_opt, c_opt = carry
      sp, cp, s_opt, c_opt, loss, acc = split_step(sp, cp, s_opt, c_opt, k, *batch)
      return (sp, cp, s_opt, c_opt), (loss, acc)

    carry = (sp, cp, s_opt, client_tx.init(cp))
    if epochs:
      x_N, y_N, plan = batches

      def one_planned(carry, step):
        index, example_mask, take = step
        new, (loss, acc) = one(carry, (x_N[index], y_N[index], example_mask))
        return (local_training.keep_if(take, new, carry),
                (jnp.where(take, loss, 0.0), jnp.where(take, acc, 0.0)))

      (sp, cp, s_opt, _), (losses, accs) = jax.lax.scan(
          one_planned, carry, (plan.index, plan.example_mask, plan.step_mask))
    else:
      (sp, cp, s_opt, _), (losses, accs) = jax.lax.scan(one, carry, batches)
    return sp, cp, s_opt, losses, accs

  def local_work_v1(state, batches):
    """Every client's K split steps against its own copy of the server-side model."""
    sp, s_opt = state.server.params, server_tx.init(state.server.params)
    sp_M, cp_M, _, losses, accs = jax.vmap(client_round, (None, None, None, 0, 0))(
        sp, state.client_params, s_opt, batches, classes)
    return sp_M, cp_M, losses, accs

  def local_work_v2(state, batches, mask):
    """The sampled clients' K split steps each, in turn, on the one server-side model."""
    def one_client(carry, m):
      sp, s_opt = carry
      new_sp, cp, new_opt, losses, accs = client_round(
          sp, state.client_params, s_opt, jax.tree.map(lambda a: a[m], batches), classes[m])
      # An unsampled client's turn leaves the server model as it was.
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(mask[m], a, b), new, old)
      return (keep(new_sp, sp), keep(new_opt, s_opt)), (cp, losses, accs)

    order = jax.random.permutation(_round_key(state, _ORDER_STREAM), num_clients)
    (sp, s_opt), outs = jax.lax.scan(one_client, (state.server.params, state.server.opt_state),
                                     order)
    # Outputs come in turn order; put them back in client order.
    cp_M, losses, accs = jax.tree.map(lambda a: a[jnp.argsort(order)], outs)
    return split_state.SideState(sp, s_opt), cp_M, losses, accs

  def local_work(state, train_data, mask):
    step_mask = None
    if epochs:
      plan = federated.round_epochs(state, train_data, local_steps, config.batch_size, epochs,
                                    key=_round_key(state, _EPOCH_STREAM))
      batches, step_mask = (train_data.x, train_data.y, plan), plan.step_mask
    else:
      # Split step j = round * K + k draws every client's minibatch as MTSL's step j does.
      first = state.step * local_steps
      xs, ys = jax.vmap(lambda j: data.sample_batches(
          train_data, jax.random.fold_in(state.rng, first + j), config.batch_size))(
              jnp.arange(local_steps))
      batches = (jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1))  # [M, K, B, ...]
    server_side, cp_M, losses, accs = (local_work_v1(state, batches) if version == 1
                                       else local_work_v2(state, batches, mask))
    return federated.ClientWork(uploads=cp_M, kept=(), losses=losses, accuracies=accs,
                                server_side=server_side, step_mask=step_mask)

  def aggregate(state, work, mask):
    """Client-side models averaged; v1's server-side copies too, v2's is already one."""
    if version == 1:
      server = split_state.SideState(
          federated.weighted_mean(work.server_side, weights_M, mask), ())
    else:
      server = work.server_side
    client_params = federated.weighted_mean(work.uploads, weights_M, mask)
    return (state.replace(server=server, client_params=client_params),
            {"server/param_norm": optax.tree.norm(server.params),
             "client/param_norm": optax.tree.norm(client_params)})

  step = federated.make_round_step(
      num_clients, sampled, weights_M, local_work, aggregate,
      sample_key=lambda state: _round_key(state, _SAMPLE_STREAM))

  def logits(state, x, clients=None):
    # The one global client-side model serves every task, whichever clients these are.
    clients = optax.tree.batch_shape(state.client_params, (x.shape[0],))
    return model.logits(state.server.params, clients, x)

  abstract = jax.eval_shape(init_state)
  # Split steps' worth of messages per client per round: K, or with local epochs each
  # client's E x n_m examples in batches of B.
  steps_M = (epochs * federation.train_counts / config.batch_size if epochs
             else local_steps)
  traffic = _traffic(model, abstract, num_classes_M, config.batch_size, input_shape,
                     steps_M, sampled / num_clients)
  return Algorithm(
      name=name, init_state=init_state, step=step, logits=logits, traffic=traffic,
      param_counts={"server": models.count_params(abstract.server.params),
                    "client_bottom (global)": models.count_params(abstract.client_params["bottom"]),
                    "client_top (global)": models.count_params(abstract.client_params["top"])},
      num_classes_M=num_classes_M)


def _traffic(model: split_model.SplitModel, abstract: SplitFedState, num_classes_M, batch_size: int,
             input_shape, steps_M, participation: float) -> ledger.StepTraffic:
  """Per round: K split steps' protocol messages plus the client-side model down and up.

  `steps_M` is K, or one (fractional) count per client with local epochs: every
  split-step message has one row per example, so a batch of b examples sends b / B of a
  full step's bytes.
  """
  num_clients = len(num_classes_M)
  x = jax.ShapeDtypeStruct((num_clients, batch_size) + tuple(input_shape), jnp.float32)
  y = jax.ShapeDtypeStruct((num_clients, batch_size), jnp.int32)

  def messages(sp, cp, x, y):
    return split_gradients.protocol_gradients(
        model, sp, optax.tree.batch_shape(cp, (num_clients,)), x, y,
        jnp.asarray(num_classes_M), jnp.full((num_clients,), 1.0 / num_clients))[4]

  per_step = ledger.traffic_from_messages(
      jax.eval_shape(messages, abstract.server.params, abstract.client_params, x, y))
  exchange = ledger.exchange_traffic(
      {"down/client_model": abstract.client_params,
       "up/client_model_delta": abstract.client_params}, num_clients, participation)
  return ledger.sum_traffic(ledger.scale_traffic(per_step, np.asarray(steps_M) * participation),
                            exchange)
