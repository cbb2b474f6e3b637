"""FedAvg (McMahan et al., AISTATS 2017) in the FedOpt form, as an `Algorithm`.

One loop step is one ROUND: sample S clients, broadcast the global model, each sampled
client runs `config.fl.local_steps` steps of `config.client_optimizer` (fresh optimizer
state every round) on its own minibatches (or `config.fl.local_epochs` passes over its
own examples: `federated.round_epochs`), and the server applies
`config.server_optimizer` to the negated weighted mean of the deltas (server SGD with
learning rate 1 is plain FedAvg). Every task is evaluated with the global model.
"""

import flax
import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data, ledger, methods, models, optimizers, split_state
from mtsl_jax.algorithms import epoch_lanes, federated, local_training
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import aggregation_weights
from mtsl_jax.algorithms.base import task_setup


@flax.struct.dataclass
class GlobalModelState:
  """The state of a method with one global model (FedAvg, centralized).

  Attributes:
    step: int32 scalar, rounds (or steps) taken.
    rng: base key; round t uses `fold_in(rng, t)`.
    server: the global parameters and the server optimizer state.
  """
  step: jax.Array
  rng: jax.Array
  server: split_state.SideState


def init_global_state(model: models.BlockStack, seed: int, input_shape: tuple[int, ...],
                      tx: optax.GradientTransformation) -> GlobalModelState:
  """Step 0 of a method with one global model (FedAvg, centralized).

  Args:
    model: the full model.
    seed: the run's seed; the parameters are every full-model baseline's initial ones
      (`local_training.init_key`).
    input_shape: shape of one example.
    tx: the optimizer that updates the global model.

  Returns:
    A GlobalModelState.
  """
  params = local_training.init_model(model, local_training.init_key(seed), input_shape)
  return GlobalModelState(step=jnp.zeros((), jnp.int32), rng=local_training.run_key(seed),
                          server=split_state.SideState(params, tx.init(params)))


def build(config, federation: data.Federation) -> Algorithm:
  """FedAvg from a validated config and its federation.

  Args:
    config: experiment config (model, fl, both optimizers, batch size, seed).
    federation: the clients' data.

  Returns:
    An Algorithm whose state is a GlobalModelState.
  """
  num_classes_M, num_clients, input_shape, _, classes = task_setup(config, federation)
  weights_M = aggregation_weights(config, federation)
  model = local_training.make_full_model(config.model, int(num_classes_M.max()))
  local_steps = federated.local_steps(config, federation)
  epochs = config.fl.local_epochs
  sampled = methods.num_sampled(config.fl.client_fraction, num_clients)
  # The client optimizer restarts every round, so its schedule spans one round's steps.
  client_tx = optimizers.make_optimizer(config.client_optimizer, local_steps)
  server_tx = optimizers.make_optimizer(config.server_optimizer, config.num_steps)

  init_state = lambda: init_global_state(model, config.seed, input_shape, server_tx)

  def local_work(state, train_data, mask):
    """Every client: K local steps from the global model on its own minibatches."""
    del mask  # every client works; the unsampled ones' work is discarded
    if epochs:
      return epoch_work(state, train_data)
    x, y = federated.draw_round_batches(state, train_data, local_steps, config.batch_size)

    def train_client(x_m, y_m, k_m):
      loss_fn = lambda p, b: local_training.client_loss(model.apply(p, b[0]), b[1], k_m)
      return local_training.local_sgd(loss_fn, state.server.params, client_tx, (x_m, y_m))

    params_M, losses, accs = jax.vmap(train_client)(x, y, classes)
    return federated.ClientWork(uploads=params_M, kept=(), losses=losses, accuracies=accs)

  # Unequal clients' epochs packed onto lanes when that computes fewer client steps.
  lanes = epoch_lanes.plan_lanes(local_training.epoch_steps(
      federation.train_counts, config.batch_size, epochs)) if epochs else None

  def epoch_work(state, train_data):
    """Every client: its local epochs from the global model (on lanes, or in lock-step
    with its extra steps masked)."""
    plan = federated.round_epochs(state, train_data, local_steps, config.batch_size, epochs)
    if lanes is not None:
      loss_fn = lambda p, b, mask, m: local_training.client_loss(
          model.apply(p, b[0]), b[1], classes[m], example_mask_B=mask)
      params_M, losses, accs = epoch_lanes.lane_epoch_sgd(
          loss_fn, state.server.params, client_tx, (train_data.x, train_data.y), plan, lanes)
      return federated.ClientWork(uploads=params_M, kept=(), losses=losses, accuracies=accs,
                                  step_mask=plan.step_mask)

    def train_client(x_m, y_m, plan_m, k_m):
      loss_fn = lambda p, b, mask: local_training.client_loss(model.apply(p, b[0]), b[1], k_m,
                                                              example_mask_B=mask)
      return local_training.epoch_sgd(loss_fn, state.server.params, client_tx, (x_m, y_m),
                                      plan_m)

    params_M, losses, accs = jax.vmap(train_client)(train_data.x, train_data.y, plan, classes)
    return federated.ClientWork(uploads=params_M, kept=(), losses=losses, accuracies=accs,
                                step_mask=plan.step_mask)

  step = federated.make_round_step(num_clients, sampled, weights_M, local_work,
                                   federated.fedopt_aggregate(server_tx, weights_M))

  abstract = jax.eval_shape(init_state)
  traffic = ledger.exchange_traffic(
      {"down/global_model": abstract.server.params, "up/model_delta": abstract.server.params},
      num_clients, sampled / num_clients)
  return Algorithm(
      name="fedavg", init_state=init_state, step=step,
      # One model for every task: which clients' examples these are does not matter.
      logits=lambda state, x, clients=None: local_training.apply_to_all(
          model, state.server.params, x),
      traffic=traffic, param_counts={"global model": models.count_params(abstract.server.params)},
      num_classes_M=num_classes_M)
