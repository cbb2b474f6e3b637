"""One MTSL training step: the static context, the initial state and the update.

Task m's model is F_m = T_m ∘ G ∘ B_m (`split_model.py`). One step minimizes

    f(φ, ψ_1..ψ_M) = Σ_m w_m f_m(φ, ψ_m)

by block gradient steps: the server updates φ with Σ_m w_m ∇_φ f_m, and client m updates
ψ_m with the gradient of its OWN loss, ∇_ψm f_m (not scaled by w_m). Client parameters
are never averaged; each side has its own optax optimizer. See docs/algorithm.md.

The MTSL code is divided by concern:
  * `task_losses.py`: masked cross-entropy and predictions over each task's label space;
  * `split_state.py`: the state pytrees and the client-tree layout (stacked or grouped);
  * `split_model.py`: the split model, its cuts and its initialization;
  * `split_gradients.py`: the fused and the protocol implementations of the gradients;
  * this module: `StepContext`, `init_state`, `apply_gradients` and `make_train_step`.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mtsl_jax import cut_defences, split_gradients, split_model, split_state

PyTree = Any


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
    common_client_init: every client's part starts from client 0's initialization.
    defences: the defences at the cuts (`cut_defences`; all zero: none).
  """
  split: split_model.SplitModel
  server_tx: optax.GradientTransformation
  client_tx: optax.GradientTransformation
  num_classes_M: jax.Array
  weights_M: jax.Array
  lr_multipliers_M: jax.Array
  batch_size: int
  implementation: str = "fused"
  common_client_init: bool = False
  defences: cut_defences.CutDefences = cut_defences.CutDefences()

  def gradients(self, server_params, client_params, x, y, key=None):
    """(server_grads, client_grads, losses_M, accs_M) with the configured implementation.

    `key` is the step's defence key (`cut_defences.step_key`), used when a defence
    draws noise.
    """
    fn = (split_gradients.fused_gradients if self.implementation == "fused"
          else split_gradients.protocol_gradients)
    out = fn(self.split, server_params, client_params, x, y, self.num_classes_M,
             self.weights_M, defences=self.defences, key=key)
    return out[:4]


def init_state(ctx: StepContext, seed: int,
               input_shape: tuple[int, ...]) -> split_state.SplitState:
  """The initial SplitState of a run: parameters, optimizer states, step 0.

  Args:
    ctx: the step context (model, optimizers, number of clients).
    seed: the run's seed; parameters and the per-step keys derive from it.
    input_shape: shape of one example.

  Returns:
    A `split_state.SplitState`.
  """
  root = jax.random.PRNGKey(seed)
  server_params, client_params = ctx.split.init(
      jax.random.fold_in(root, 0), input_shape, ctx.num_classes_M.shape[0])
  if ctx.common_client_init:  # an ablation: one initialization for every client
    client_params = jax.tree.map(lambda p: jnp.broadcast_to(p[:1], p.shape), client_params)
  (client_opt,) = split_state.map_clients(lambda p: (ctx.client_tx.init(p),), client_params)
  return split_state.SplitState(
      step=jnp.zeros((), jnp.int32),
      rng=jax.random.fold_in(root, 1),
      server=split_state.SideState(server_params, ctx.server_tx.init(server_params)),
      clients=split_state.SideState(client_params, client_opt))


def apply_gradients(ctx: StepContext, state: split_state.SplitState, g_server: PyTree,
                    g_clients: PyTree) -> tuple[split_state.SplitState, dict[str, jax.Array]]:
  """One optimizer step on each side; returns the new state and health metrics."""
  server, clients = state.server, state.clients
  upd_s, opt_s = ctx.server_tx.update(g_server, server.opt_state, server.params)
  upd_c, opt_c = split_state.map_clients(ctx.client_tx.update, g_clients,
                                         clients.opt_state, clients.params)
  # A per-client multiplier on the final update is a per-client learning rate for every
  # optimizer here (the learning rate is the last scaling each of them applies).
  upd_c = split_state.scale_clients(upd_c, ctx.lr_multipliers_M)
  new_state = state.replace(
      step=state.step + 1,
      server=split_state.SideState(optax.apply_updates(server.params, upd_s), opt_s),
      clients=split_state.SideState(optax.apply_updates(clients.params, upd_c), opt_c))
  # Per-step health is the gradient norms alone: each norm is one more pass over the
  # parameters, and on small models the update and parameter norms of every step cost
  # ~40% of the step's time (benchmarks/RESULTS.md). Parameter norms are reported at log
  # steps from the state instead (train.py).
  health = {"server/grad_norm": optax.tree.norm(g_server),
            "client/grad_norm": split_state.per_client_norms(g_clients)}
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
  def step(state: split_state.SplitState,
           train_data) -> tuple[split_state.SplitState, dict[str, jax.Array]]:
    x, y = sample_batches(train_data, jax.random.fold_in(state.rng, state.step),
                          ctx.batch_size)
    key = (cut_defences.step_key(state.rng, state.step) if ctx.defences.active else None)
    g_server, g_clients, losses, accs = ctx.gradients(
        state.server.params, state.clients.params, x, y, key)
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
