"""Multi-Task Split Learning: the split model, its state, and one training step.

Task m's model is F_m = T_m ∘ G ∘ B_m: client bottom B_m(ψ_m^b), the server part G(φ)
shared by all tasks, and client top T_m(ψ_m^t). One step minimizes

    f(φ, ψ_1..ψ_M) = Σ_m w_m f_m(φ, ψ_m)

by block gradient steps: the server updates φ with Σ_m w_m ∇_φ f_m, and client m updates
ψ_m with the gradient of its OWN loss, ∇_ψm f_m (not scaled by w_m). Client parameters
are never averaged; each side has its own optax optimizer. See docs/algorithm.md.

Two implementations of the same gradients:
  * `fused_gradients`: differentiate the composed per-task losses in one backward pass.
  * `protocol_gradients`: what would travel on a network, message by message (client
    forward -> smashed data -> server forward/backward -> cut gradients -> client
    backward), each cut crossed with `jax.vjp`. It also returns the messages, whose
    shapes and dtypes feed the communication ledger (`ledger.py`).

Client parameters and optimizer states are stacked along a leading client axis [M, ...]
and all client work is `jax.vmap`-ed; the server part runs once on the stacked smashed
data of all tasks. With client groups of different widths (`client_groups.py`) a client
tree is a tuple over groups of such stacked trees; the model's methods (`client_bottom`,
`client_top`, `client_parts`, `init`) and the layout functions here (`map_clients`,
`scale_clients`, `per_client_norms`) handle both, so the gradients and the step below are
written once for both.
"""

import dataclasses
import itertools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtsl_jax import models

ORIENTATIONS = ("bottom", "top", "u_shaped")
PyTree = Any


@flax.struct.dataclass
class SideState:
  """Parameters and optimizer state of one side (server, or all clients stacked)."""
  params: PyTree
  opt_state: PyTree


@flax.struct.dataclass
class SplitState:
  """Everything that changes during MTSL training, as one pytree.

  Attributes:
    step: int32 scalar, the number of steps taken.
    rng: the run's base PRNG key; step t uses `fold_in(rng, t)`, so no key is reused and a
      resumed run draws exactly the batches an uninterrupted one would.
    server: φ and the server optimizer state.
    clients: ψ_1..ψ_M as {'bottom': ..., 'top': ...} and the client optimizer states,
      every leaf with a leading client axis of size M; with client groups
      (`client_groups.py`) a tuple over groups of such trees, group g's leaves [M_g, ...].
  """
  step: jax.Array
  rng: jax.Array
  server: SideState
  clients: SideState


def masked_cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array,
                         num_classes: jax.Array) -> jax.Array:
  """Mean cross-entropy of one task whose label space is the first `num_classes` logits.

  Tasks with smaller label spaces share a head of the largest size; the logits beyond a
  task's classes are pushed to a large negative value, so they get zero probability and
  zero gradient.
  """
  valid = jnp.arange(logits_BxC.shape[-1]) < num_classes
  logits_BxC = jnp.where(valid, logits_BxC, -1e9)
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B).mean()


def masked_predictions(logits: jax.Array, num_classes: jax.Array) -> jax.Array:
  """Argmax over each task's own label space; logits [..., C], num_classes broadcastable."""
  valid = jnp.arange(logits.shape[-1]) < jnp.expand_dims(num_classes, -1)
  return jnp.argmax(jnp.where(valid, logits, -jnp.inf), axis=-1)


@dataclasses.dataclass(frozen=True)
class SplitModel:
  """The three parts of every task model and where they run.

  Attributes:
    bottom: client input blocks B (empty in the 'top' orientation).
    server: the shared server part G.
    top: client head blocks T (empty in the 'bottom' orientation).
    orientation: 'bottom', 'top' or 'u_shaped'.
  """
  bottom: models.BlockStack
  server: models.BlockStack
  top: models.BlockStack
  orientation: str

  @property
  def client_has_bottom(self) -> bool:
    return bool(self.bottom.blocks)

  @property
  def server_computes_loss(self) -> bool:
    """True when the head is on the server, so labels travel uplink."""
    return not self.top.blocks

  def client_bottom(self, params: PyTree, x: jax.Array) -> jax.Array:
    """B_m for all clients: params stacked [M, ...], x [M, B, ...] -> smashed [M, B, ...]."""
    if not self.client_has_bottom:
      return x
    return jax.vmap(self.bottom.apply)(params, x)

  def server_part(self, params: PyTree, smashed: jax.Array) -> jax.Array:
    """G on the smashed data of all tasks at once: [M, B, ...] -> [M, B, ...]."""
    m, b = smashed.shape[:2]
    out = self.server.apply(params, smashed.reshape((m * b,) + smashed.shape[2:]))
    return out.reshape((m, b) + out.shape[1:])

  def client_top(self, params: PyTree, h: jax.Array) -> jax.Array:
    """T_m for all clients: stacked params, h [M, B, ...] -> logits [M, B, C]."""
    if self.server_computes_loss:
      return h
    return jax.vmap(self.top.apply)(params, h)

  def logits(self, server_params: PyTree, client_params: PyTree, x: jax.Array) -> jax.Array:
    """F_m(x_m) for every task: x [M, B, ...] -> logits [M, B, C]."""
    bottom, top = self.client_parts(client_params)
    return self.client_top(top, self.server_part(server_params, self.client_bottom(bottom, x)))

  # The client-parameter layout: one tree stacked over all M clients.

  def client_parts(self, client_params: PyTree) -> tuple[PyTree, PyTree]:
    """(bottom, top) parameters of all clients, as `client_bottom` / `client_top` take them."""
    return client_params["bottom"], client_params["top"]

  def join_client_parts(self, bottom: PyTree, top: PyTree) -> PyTree:
    """The inverse of `client_parts` (for gradients computed part by part)."""
    return {"bottom": bottom, "top": top}

  def init(self, key: jax.Array, input_shape: tuple[int, ...],
           num_clients: int) -> tuple[PyTree, PyTree]:
    """Initial (φ, ψ); see `init_params`."""
    return init_params(self, key, input_shape, num_clients)


def make_split_model(model_config, split_config, num_classes: int) -> SplitModel:
  """Cuts the block list of `model_config` as `split_config` says.

  Args:
    model_config: the `model` config section.
    split_config: the `split` config section (orientation and the two cuts).
    num_classes: head size, the largest label space over the tasks.

  Returns:
    A SplitModel: one client architecture (`model.client_width_groups` is not read;
    `client_groups.make_split_model` builds mixed widths).
  """
  return cut_blocks(models.make_blocks(model_config, num_classes), split_config)


def cut_blocks(blocks: list, split_config) -> SplitModel:
  """The SplitModel of a block list cut as `split_config` says (first b, last t blocks)."""
  b, t = split_config.client_bottom_blocks, split_config.client_top_blocks
  n = len(blocks)
  return SplitModel(bottom=models.BlockStack(tuple(blocks[:b])),
                    server=models.BlockStack(tuple(blocks[b:n - t])),
                    top=models.BlockStack(tuple(blocks[n - t:])),
                    orientation=split_config.orientation)


INIT_CLIENTS_PER_BATCH = 256


def init_params(split: SplitModel, key: jax.Array, input_shape: tuple[int, ...],
                num_clients: int, first_client: int = 0) -> tuple[PyTree, PyTree]:
  """Initial φ and stacked ψ; every client gets its own initialization.

  Args:
    split: the split model.
    key: PRNG key; server and clients use keys folded in from it.
    input_shape: shape of one example.
    num_clients: M.
    first_client: index of the first client; client m's key depends on its index alone,
      so a group of clients starting at `first_client` gets the parameters those clients
      would get in one stacked model of the same architecture.

  Returns:
    (server_params, client_params) with client leaves of leading size M.
  """
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)

  def init_part(module: nn.Module, k, inputs):
    if not module.blocks:
      return {}, inputs
    params = module.init(k, inputs)
    return params, jax.eval_shape(module.apply, params, inputs)

  def zeros_like_shape(s):
    return jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s

  k_server, k_clients = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  _, smashed = init_part(split.bottom, k_server, x)
  server_params, server_out = init_part(split.server, k_server, zeros_like_shape(smashed))
  server_out = zeros_like_shape(server_out)

  def init_client(k):
    bottom, _ = init_part(split.bottom, jax.random.fold_in(k, 0), x)
    top, _ = init_part(split.top, jax.random.fold_in(k, 1), server_out)
    return {"bottom": bottom, "top": top}

  client_keys = jax.vmap(lambda m: jax.random.fold_in(k_clients, m))(
      first_client + jnp.arange(num_clients))
  # Batches of clients in a loop rather than all at once: initialization's temporaries
  # (random bits, truncated-normal intermediates) would otherwise be several times the
  # whole client state, the peak memory of a run with many clients. Same values.
  return server_params, jax.lax.map(init_client, client_keys,
                                    batch_size=min(num_clients, INIT_CLIENTS_PER_BATCH))


def per_task_losses(split: SplitModel, server_params: PyTree, client_params: PyTree,
                    x: jax.Array, y: jax.Array, num_classes_M: jax.Array):
  """The M task losses f_m and their train accuracies on one minibatch per client."""
  logits_MxBxC = split.logits(server_params, client_params, x)
  losses_M = jax.vmap(masked_cross_entropy)(logits_MxBxC, y, num_classes_M)
  correct = masked_predictions(logits_MxBxC, num_classes_M[:, None]) == y
  return losses_M, correct.mean(axis=1)


def _per_client_scale(tree: PyTree, scale_M: jax.Array) -> PyTree:
  return jax.tree.map(lambda g: g * scale_M.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
                      tree)


# A client tree (parameters, gradients, updates) is stacked over clients [M, ...], or, with
# client groups, a tuple over groups of stacked trees in client order. The three functions
# below are the only ones that look at which; a Python loop over the (few) groups runs at
# trace time, inside the one jitted step.


def map_clients(fn: Callable, client_tree: PyTree, *others: PyTree) -> tuple:
  """`fn` vmapped over the clients of each group.

  Args:
    fn: one client's slices -> a TUPLE of output trees (e.g. an optimizer's update).
    client_tree: a client tree; its layout (stacked or grouped) decides the others'.
    *others: trees laid out the same way (e.g. optimizer states: one per group).

  Returns:
    The tuple of `fn`'s outputs, each laid out like `client_tree`.
  """
  if not isinstance(client_tree, tuple):
    return jax.vmap(fn)(client_tree, *others)
  per_group = [jax.vmap(fn)(*trees) for trees in zip(client_tree, *others)]
  return tuple(tuple(outputs) for outputs in zip(*per_group))


def scale_clients(client_tree: PyTree, scale_M: jax.Array) -> PyTree:
  """Client m's slice of a client tree times scale_M[m] (scale_M in client order)."""
  if not isinstance(client_tree, tuple):
    return _per_client_scale(client_tree, scale_M)
  sizes = [jax.tree.leaves(t)[0].shape[0] for t in client_tree]
  starts = [0, *itertools.accumulate(sizes)]
  return tuple(_per_client_scale(t, scale_M[s:s + n])
               for t, s, n in zip(client_tree, starts, sizes))


def per_client_norms(client_tree: PyTree) -> jax.Array:
  """The norm of each client's slice of a client tree, float [M] in client order."""
  if not isinstance(client_tree, tuple):
    return jax.vmap(optax.tree.norm)(client_tree)
  return jnp.concatenate([jax.vmap(optax.tree.norm)(t) for t in client_tree])


def all_finite(tree: PyTree) -> jax.Array:
  """True when every entry of every floating leaf of `tree` is finite (True if none)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.ones((), bool)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def fused_gradients(split: SplitModel, server_params: PyTree, client_params: PyTree,
                    x: jax.Array, y: jax.Array, num_classes_M: jax.Array,
                    weights_M: jax.Array):
  """MTSL gradients by differentiating the composed model in one backward pass.

  The backward pass is seeded with the task weights, which gives the server exactly
  Σ_m w_m ∇_φ f_m and client m the gradient w_m ∇_ψm f_m; since ψ_m enters only f_m,
  dividing client m's gradient by w_m (> 0) recovers ∇_ψm f_m.

  Args:
    split: the split model.
    server_params: φ.
    client_params: stacked ψ.
    x: inputs [M, B, ...].
    y: labels [M, B].
    num_classes_M: label-space size of each task.
    weights_M: task weights w_m (positive, summing to one).

  Returns:
    (server_grads, client_grads, losses_M, accuracies_M).
  """
  fn = lambda sp, cp: per_task_losses(split, sp, cp, x, y, num_classes_M)
  losses, vjp_fn, accs = jax.vjp(fn, server_params, client_params, has_aux=True)
  g_server, g_clients = vjp_fn(weights_M.astype(losses.dtype))
  return g_server, scale_clients(g_clients, 1.0 / weights_M), losses, accs


def protocol_gradients(split: SplitModel, server_params: PyTree, client_params: PyTree,
                       x: jax.Array, y: jax.Array, num_classes_M: jax.Array,
                       weights_M: jax.Array):
  """MTSL gradients computed as the messages of the protocol, in the order they travel.

  1. Clients run B_m and send the smashed data up (raw inputs in the 'top' orientation,
     where the server holds the input side).
  2. The server runs G on all tasks. With the head on the server ('bottom') it also gets
     the labels, computes f_m and sends each client ∂f_m/∂smashed_m down. Otherwise it
     sends G's outputs down, each client computes its own loss with T_m and sends
     ∂f_m/∂G_out_m up, and the server backpropagates them: weighted by w_m for φ,
     unweighted for the cut gradients it returns to the clients' bottoms ('u_shaped').
  3. Clients backpropagate the cut gradients through B_m.

  Args:
    Same as `fused_gradients`.

  Returns:
    (server_grads, client_grads, losses_M, accuracies_M, messages) where messages maps
    'up/...' and 'down/...' names to the arrays sent, each with a leading client axis.
  """
  messages = {}
  bottom_params, top_params = split.client_parts(client_params)
  # 1. Client forward.
  if split.client_has_bottom:
    smashed, bottom_vjp = jax.vjp(lambda p: split.client_bottom(p, x), bottom_params)
    messages["up/smashed"] = smashed
  else:
    smashed = x
    messages["up/inputs"] = x
  g_top = top_params  # {} stays {} when the server holds the head
  # 2. Server forward and backward (with the client top in between when it has one).
  if split.server_computes_loss:
    messages["up/labels"] = y

    def server_losses(sp, s):
      logits = split.server_part(sp, s)
      losses = jax.vmap(masked_cross_entropy)(logits, y, num_classes_M)
      return losses, (masked_predictions(logits, num_classes_M[:, None]) == y).mean(axis=1)

    losses, server_vjp, accs = jax.vjp(server_losses, server_params, smashed, has_aux=True)
    g_server, _ = server_vjp(weights_M.astype(losses.dtype))
    _, cut_grad = server_vjp(jnp.ones_like(losses))
  else:
    server_out, server_vjp = jax.vjp(split.server_part, server_params, smashed)
    messages["down/activations"] = server_out

    def client_losses(tp, h):
      logits = split.client_top(tp, h)
      losses = jax.vmap(masked_cross_entropy)(logits, y, num_classes_M)
      return losses, (masked_predictions(logits, num_classes_M[:, None]) == y).mean(axis=1)

    losses, top_vjp, accs = jax.vjp(client_losses, top_params, server_out, has_aux=True)
    g_top, top_cut_grad = top_vjp(jnp.ones_like(losses))
    messages["up/cut_gradients"] = top_cut_grad
    g_server, _ = server_vjp(_per_client_scale(top_cut_grad, weights_M))
    _, cut_grad = server_vjp(top_cut_grad)
  # 3. Client backward.
  if split.client_has_bottom:
    messages["down/cut_gradients"] = cut_grad
    (g_bottom,) = bottom_vjp(cut_grad)
  else:
    g_bottom = bottom_params  # {}
  return g_server, split.join_client_parts(g_bottom, g_top), losses, accs, messages


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Everything a step needs besides the state and the data (static for a run).

  Attributes:
    split: the split model (a SplitModel, or a `client_groups.GroupedSplitModel`).
    server_tx, client_tx: the two optax optimizers.
    num_classes_M: label-space size per task, int32 [M].
    weights_M: task weights w_m, float32 [M], positive, summing to one.
    lr_multipliers_M: per-client learning-rate multipliers, float32 [M].
    batch_size: examples per client per step.
    implementation: 'fused' or 'protocol'.
  """
  split: SplitModel
  server_tx: optax.GradientTransformation
  client_tx: optax.GradientTransformation
  num_classes_M: jax.Array
  weights_M: jax.Array
  lr_multipliers_M: jax.Array
  batch_size: int
  implementation: str = "fused"

  def gradients(self, server_params, client_params, x, y):
    """(server_grads, client_grads, losses_M, accs_M) with the configured implementation."""
    fn = fused_gradients if self.implementation == "fused" else protocol_gradients
    out = fn(self.split, server_params, client_params, x, y, self.num_classes_M,
             self.weights_M)
    return out[:4]


def init_state(ctx: StepContext, seed: int, input_shape: tuple[int, ...]) -> SplitState:
  """The initial SplitState of a run: parameters, optimizer states, step 0.

  Args:
    ctx: the step context (model, optimizers, number of clients).
    seed: the run's seed; parameters and the per-step keys derive from it.
    input_shape: shape of one example.

  Returns:
    A SplitState.
  """
  root = jax.random.PRNGKey(seed)
  server_params, client_params = ctx.split.init(
      jax.random.fold_in(root, 0), input_shape, ctx.num_classes_M.shape[0])
  (client_opt,) = map_clients(lambda p: (ctx.client_tx.init(p),), client_params)
  return SplitState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.fold_in(root, 1),
      server=SideState(server_params, ctx.server_tx.init(server_params)),
      clients=SideState(client_params, client_opt))


def apply_gradients(ctx: StepContext, state: SplitState, g_server: PyTree,
                    g_clients: PyTree) -> tuple[SplitState, dict[str, jax.Array]]:
  """One optimizer step on each side; returns the new state and health metrics."""
  server, clients = state.server, state.clients
  upd_s, opt_s = ctx.server_tx.update(g_server, server.opt_state, server.params)
  upd_c, opt_c = map_clients(ctx.client_tx.update, g_clients, clients.opt_state,
                             clients.params)
  # A per-client multiplier on the final update is a per-client learning rate for every
  # optimizer here (the learning rate is the last scaling each of them applies).
  upd_c = scale_clients(upd_c, ctx.lr_multipliers_M)
  new_state = state.replace(
      step=state.step + 1,
      server=SideState(optax.apply_updates(server.params, upd_s), opt_s),
      clients=SideState(optax.apply_updates(clients.params, upd_c), opt_c))
  # Per-step health is the gradient norms alone: each norm is one more pass over the
  # parameters, and on small models the update and parameter norms of every step cost
  # ~40% of the step's time (benchmarks/RESULTS.md). Parameter norms are reported at log
  # steps from the state instead (train.py).
  health = {"server/grad_norm": optax.tree.norm(g_server),
            "client/grad_norm": per_client_norms(g_clients)}
  return new_state, health


def make_train_step(ctx: StepContext, sample_batches: Callable) -> Callable:
  """Builds `step(state, train_data) -> (state, metrics)` for one MTSL step.

  Args:
    ctx: the step context.
    sample_batches: `(data, key, batch_size) -> (x [M, B, ...], y [M, B])`, drawing every
      client's minibatch on the device.

  Returns:
    A pure step function (not jitted; `loop.py` runs many of them in one jitted call).
    Its metrics hold 'task_loss' and 'task_accuracy' [M], the gradient norms, and the
    finiteness flags 'finite/server' (scalar) and 'finite/clients' [M] that the loop
    uses to stop on divergence.
  """
  def step(state: SplitState, train_data) -> tuple[SplitState, dict[str, jax.Array]]:
    x, y = sample_batches(train_data, jax.random.fold_in(state.rng, state.step),
                          ctx.batch_size)
    g_server, g_clients, losses, accs = ctx.gradients(
        state.server.params, state.clients.params, x, y)
    new_state, health = apply_gradients(ctx, state, g_server, g_clients)
    metrics = dict(health, task_loss=losses, task_accuracy=accs,
                   loss=jnp.sum(ctx.weights_M * losses))
    # A NaN or inf anywhere in a gradient makes its norm non-finite, so the norms double
    # as the gradients' finiteness check without another pass over them. Parameters that
    # an update overflows are caught by the loop, once per chunk (`loop.Runner`): a pass
    # over every parameter per step cost a quarter of the MLP's step time at M = 100.
    metrics["finite/losses"] = jnp.isfinite(losses)
    metrics["finite/server"] = jnp.isfinite(health["server/grad_norm"])
    metrics["finite/clients"] = jnp.isfinite(health["client/grad_norm"])
    return new_state, metrics

  return step
