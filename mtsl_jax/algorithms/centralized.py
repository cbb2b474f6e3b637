"""Centralized training on the weighted union of the clients' data, as an `Algorithm`.

The upper reference without communication constraints: one model, and each step draws
every client's minibatch (the same draws as round t of FedAvg's first local step) and
takes one step of `config.server_optimizer` (one model, held in one place) on

    Σ_m w_m f_m(θ)        (w_m from config.split.task_weights).

Nothing is counted on the ledger: the data are assumed pooled beforehand. Every task is
evaluated with the one model.
"""

import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data, ledger, models, optimizers, split_state
from mtsl_jax.algorithms import fedavg, local_training
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import task_setup


def build(config, federation: data.Federation) -> Algorithm:
  """Centralized training from a validated config and its federation.

  Args:
    config: experiment config (model, server_optimizer, batch size, seed).
    federation: the clients' data.

  Returns:
    An Algorithm whose state is a `fedavg.GlobalModelState`.
  """
  num_classes_M, num_clients, input_shape, weights_M, classes = task_setup(config,
                                                                        federation)
  model = local_training.make_full_model(config.model, int(num_classes_M.max()))
  tx = optimizers.make_optimizer(config.server_optimizer, config.num_steps)

  init_state = lambda: fedavg.init_global_state(model, config.seed, input_shape, tx)

  def objective(params, x, y):
    logits = local_training.apply_to_all(model, params, x)
    losses, accs = jax.vmap(local_training.client_loss)(logits, y, classes)
    return jnp.sum(weights_M * losses), (losses, accs)

  def step(state, train_data):
    round_key = jax.random.fold_in(state.rng, state.step)
    x, y = local_training.draw_batches(train_data, jax.random.fold_in(round_key, 0), 1,
                                       config.batch_size)
    (loss, (losses, accs)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.server.params, x[:, 0], y[:, 0])
    updates, opt_state = tx.update(grads, state.server.opt_state, state.server.params)
    server = split_state.SideState(optax.apply_updates(state.server.params, updates), opt_state)
    finite = split_state.all_finite(grads) & jnp.isfinite(loss)
    metrics = {"loss": loss, "task_loss": losses, "task_accuracy": accs,
               "server/grad_norm": optax.tree.norm(grads),
               "server/update_norm": optax.tree.norm(updates),
               "server/param_norm": optax.tree.norm(server.params),
               "finite/server": finite, "finite/clients": jnp.isfinite(losses)}
    return state.replace(step=state.step + 1, server=server), metrics

  abstract = jax.eval_shape(init_state)
  return Algorithm(
      name="centralized", init_state=init_state, step=step,
      # One model for every task: which clients' examples these are does not matter.
      logits=lambda state, x, clients=None: local_training.apply_to_all(
          model, state.server.params, x),
      traffic=ledger.no_traffic(num_clients),
      param_counts={"model": models.count_params(abstract.server.params)},
      num_classes_M=num_classes_M)
