"""Local-only training: every client trains its own full model on its own data.

The lower reference for collaboration: nothing travels (the ledger is zero). Each step,
every client takes one step of `config.client_optimizer` (its optimizer state kept across
steps) on its own minibatch; all clients start from the same initial parameters as the
other full-model baselines. Task m is evaluated with client m's model.
"""

import flax
import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data, ledger, models, optimizers, split_state
from mtsl_jax.algorithms import local_training
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import take_clients
from mtsl_jax.algorithms.base import task_setup


@flax.struct.dataclass
class LocalState:
  """Attributes: step (int32), rng (base key), clients (params and optimizer states, [M])."""
  step: jax.Array
  rng: jax.Array
  clients: split_state.SideState


def build(config, federation: data.Federation) -> Algorithm:
  """Local-only training from a validated config and its federation.

  Args:
    config: experiment config (model, client_optimizer, batch size, seed).
    federation: the clients' data.

  Returns:
    An Algorithm whose state is a LocalState.
  """
  num_classes_M, num_clients, input_shape, weights_M, classes = task_setup(config,
                                                                        federation)
  model = local_training.make_full_model(config.model, int(num_classes_M.max()))
  tx = optimizers.make_optimizer(config.client_optimizer, config.num_steps)

  def init_state():
    params = local_training.init_model(model, local_training.init_key(config.seed),
                                       input_shape)
    params_M = optax.tree.batch_shape(params, (num_clients,))
    return LocalState(step=jnp.zeros((), jnp.int32), rng=local_training.run_key(config.seed),
                      clients=split_state.SideState(params_M, jax.vmap(tx.init)(params_M)))

  def client_step(params, opt_state, x, y, k):
    loss_fn = lambda p: local_training.client_loss(model.apply(p, x), y, k)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    finite = split_state.all_finite(grads) & jnp.isfinite(loss)
    return optax.apply_updates(params, updates), opt_state, loss, acc, finite

  def step(state, train_data):
    round_key = jax.random.fold_in(state.rng, state.step)
    x, y = local_training.draw_batches(train_data, jax.random.fold_in(round_key, 0), 1,
                                       config.batch_size)
    params, opt_state, losses, accs, finite = jax.vmap(client_step)(
        state.clients.params, state.clients.opt_state, x[:, 0], y[:, 0], classes)
    metrics = {"loss": jnp.sum(weights_M * losses), "task_loss": losses,
               "task_accuracy": accs,
               "client/param_norm": jax.vmap(optax.tree.norm)(params),
               "finite/server": jnp.ones((), bool), "finite/clients": finite}
    return state.replace(step=state.step + 1,
                         clients=split_state.SideState(params, opt_state)), metrics

  abstract = jax.eval_shape(init_state)
  return Algorithm(
      name="local", init_state=init_state, step=step,
      logits=lambda state, x, clients=None: jax.vmap(model.apply)(
          take_clients(state.clients.params, clients), x),
      traffic=ledger.no_traffic(num_clients),
      param_counts={"model (each)": models.count_params(abstract.clients.params) // num_clients},
      num_classes_M=num_classes_M)
