"""MTSL's gradients, two implementations of the same numbers.

One MTSL step minimizes f(φ, ψ_1..ψ_M) = Σ_m w_m f_m(φ, ψ_m) by block gradient steps: the
server gets Σ_m w_m ∇_φ f_m, and client m the gradient of its OWN loss, ∇_ψm f_m (not
scaled by w_m); see docs/algorithm.md.

  * `fused_gradients`: differentiate the composed per-task losses in one backward pass.
  * `protocol_gradients`: what would travel on a network, message by message (client
    forward -> smashed data -> server forward/backward -> cut gradients -> client
    backward), each cut crossed with `jax.vjp`. It also returns the messages, whose
    shapes and dtypes feed the communication ledger (`ledger.py`).

Both take a `split_model.SplitModel` or a `client_groups.GroupedSplitModel` and client
trees in either layout (`split_state.py`).
"""

from typing import Any

import jax
import jax.numpy as jnp

from mtsl_jax import cut_defences, split_model, split_state, task_losses

PyTree = Any


def losses_and_accuracies(logits_MxBxC: jax.Array, y: jax.Array, num_classes_M: jax.Array,
                          example_mask: jax.Array | None = None
                          ) -> tuple[jax.Array, jax.Array]:
  """The M task losses f_m and train accuracies from every task's logits on its minibatch.

  Args:
    logits_MxBxC: every task model's logits.
    y: labels [M, B].
    num_classes_M: label-space size of each task.
    example_mask: None when every example is real; else bool [M, B], and each task's
      means run over its True examples only (SplitFed's local epochs: a smaller last batch).

  Returns:
    (losses [M], accuracies [M]).
  """
  correct = task_losses.masked_predictions(logits_MxBxC, num_classes_M[:, None]) == y
  if example_mask is not None:
    per_example = task_losses.cross_entropy(logits_MxBxC, y, num_classes_M[:, None])
    return (task_losses.masked_mean(per_example, example_mask, axis=1),
            task_losses.masked_mean(correct, example_mask, axis=1))
  losses_M = jax.vmap(task_losses.masked_cross_entropy)(logits_MxBxC, y, num_classes_M)
  return losses_M, correct.mean(axis=1)


def per_task_losses(split: split_model.SplitModel, server_params: PyTree,
                    client_params: PyTree, x: jax.Array, y: jax.Array,
                    num_classes_M: jax.Array, example_mask: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
  """The M task losses f_m and their train accuracies on one minibatch per client."""
  return losses_and_accuracies(split.logits(server_params, client_params, x), y,
                               num_classes_M, example_mask)


def fused_gradients(split: split_model.SplitModel, server_params: PyTree,
                    client_params: PyTree, x: jax.Array, y: jax.Array,
                    num_classes_M: jax.Array, weights_M: jax.Array,
                    example_mask: jax.Array | None = None,
                    defences: cut_defences.CutDefences | None = None,
                    key: jax.Array | None = None):
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
    example_mask: None, or bool [M, B]: the real examples (see `losses_and_accuracies`).
    defences: the defences at the cuts (None or all zero: none).
    key: the step's defence key (`cut_defences.step_key`); needed when a defence draws
      noise.

  Returns:
    (server_grads, client_grads, losses_M, accuracies_M); the losses are the task losses
    f_m, without a NoPeek penalty.
  """
  if defences is None or not defences.active:
    def fn(sp, cp):
      losses, accs = per_task_losses(split, sp, cp, x, y, num_classes_M, example_mask)
      return losses, (losses, accs)
  else:
    fn = lambda sp, cp: _defended_losses(split, sp, cp, x, y, num_classes_M, weights_M,
                                         example_mask, defences, key)
  # The objective differentiated is f_m (+ the NoPeek penalty); the task losses ride along.
  objective, vjp_fn, (losses, accs) = jax.vjp(fn, server_params, client_params, has_aux=True)
  g_server, g_clients = vjp_fn(weights_M.astype(objective.dtype))
  return g_server, split_state.scale_clients(g_clients, 1.0 / weights_M), losses, accs


def _defended_losses(split, server_params, client_params, x, y, num_classes_M, weights_M,
                     example_mask, defences, key):
  """(f_m + α dCor_m, (f_m, accs)): the composed model with the defences at its cuts."""
  bottom, top = split.client_parts(client_params)
  smashed = split.client_bottom(bottom, x)
  penalty = (defences.nopeek_penalty(x, smashed) if split.client_has_bottom
             else jnp.zeros(x.shape[0], x.dtype))
  if split.client_has_bottom:
    smashed = defences.noisy_smashed(smashed, key)
  h = split.server_part(server_params, smashed)
  if not split.server_computes_loss:
    h = defences.guard_head_input(h, key, weights_M)
  losses, accs = losses_and_accuracies(split.client_top(top, h), y, num_classes_M,
                                       example_mask)
  return losses + penalty, (losses, accs)


def protocol_gradients(split: split_model.SplitModel, server_params: PyTree,
                       client_params: PyTree, x: jax.Array, y: jax.Array,
                       num_classes_M: jax.Array, weights_M: jax.Array,
                       example_mask: jax.Array | None = None,
                       defences: cut_defences.CutDefences | None = None,
                       key: jax.Array | None = None):
  """MTSL gradients computed as the messages of the protocol, in the order they travel.

  1. Clients run B_m and send the smashed data up (raw inputs in the 'top' orientation,
     where the server holds the input side).
  2. The server runs G on all tasks. With the head on the server ('bottom') it also gets
     the labels, computes f_m and sends each client ∂f_m/∂smashed_m down. Otherwise it
     sends G's outputs down, each client computes its own loss with T_m and sends
     ∂f_m/∂G_out_m up, and the server backpropagates them: weighted by w_m for φ,
     unweighted for the cut gradients it returns to the clients' bottoms ('u_shaped').
  3. Clients backpropagate the cut gradients through B_m.

  With `defences`, the messages are the defended ones (`cut_defences`): noisy smashed
  data, protected cut gradients; a NoPeek penalty adds its gradient to the client
  bottom's, which never travels.

  Args:
    Same as `fused_gradients`.

  Returns:
    (server_grads, client_grads, losses_M, accuracies_M, messages) where messages maps
    'up/...' and 'down/...' names to the arrays sent, each with a leading client axis.
  """
  defences = defences or cut_defences.CutDefences()
  messages = {}
  bottom_params, top_params = split.client_parts(client_params)
  # 1. Client forward.
  if split.client_has_bottom:
    smashed, bottom_vjp = jax.vjp(lambda p: split.client_bottom(p, x), bottom_params)
    smashed = defences.noisy_smashed(smashed, key)
    messages["up/smashed"] = smashed
  else:
    smashed = x
    messages["up/inputs"] = x
  g_top = top_params  # {} stays {} when the server holds the head
  # 2. Server forward and backward (with the client top in between when it has one).
  if split.server_computes_loss:
    messages["up/labels"] = y

    server_losses = lambda sp, s: losses_and_accuracies(split.server_part(sp, s), y,
                                                        num_classes_M, example_mask)
    losses, server_vjp, accs = jax.vjp(server_losses, server_params, smashed, has_aux=True)
    g_server, _ = server_vjp(weights_M.astype(losses.dtype))
    _, cut_grad = server_vjp(jnp.ones_like(losses))
  else:
    server_out, server_vjp = jax.vjp(split.server_part, server_params, smashed)
    messages["down/activations"] = server_out

    client_losses = lambda tp, h: losses_and_accuracies(split.client_top(tp, h), y,
                                                        num_classes_M, example_mask)
    losses, top_vjp, accs = jax.vjp(client_losses, top_params, server_out, has_aux=True)
    g_top, top_cut_grad = top_vjp(jnp.ones_like(losses))
    top_cut_grad = defences.protected_cut_gradient(top_cut_grad, key)
    messages["up/cut_gradients"] = top_cut_grad
    g_server, _ = server_vjp(split_state.scale_clients(top_cut_grad, weights_M))
    _, cut_grad = server_vjp(top_cut_grad)
  # 3. Client backward.
  if split.client_has_bottom:
    messages["down/cut_gradients"] = cut_grad
    (g_bottom,) = bottom_vjp(cut_grad)
    if defences.nopeek_weight > 0:  # the client's own penalty, computed at home
      penalty = lambda p: jnp.sum(defences.nopeek_penalty(x, split.client_bottom(p, x)))
      g_bottom = jax.tree.map(jnp.add, g_bottom, jax.grad(penalty)(bottom_params))
  else:
    g_bottom = bottom_params  # {}
  return g_server, split.join_client_parts(g_bottom, g_top), losses, accs, messages
