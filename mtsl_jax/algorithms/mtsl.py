"""MTSL as an `Algorithm`: builds the split model, optimizers and step from a config."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtsl_jax import client_groups, cut_defences, data, ledger, models, optimizers, split
from mtsl_jax.algorithms.base import Algorithm
from mtsl_jax.algorithms.base import take_clients
from mtsl_jax.algorithms.base import task_setup


def _client_param_counts(client_params, num_clients: int) -> dict[str, int]:
  """Parameters of one client's bottom and top; per group when the widths differ."""
  if not isinstance(client_params, tuple):
    return {"client_bottom (each)": models.count_params(client_params["bottom"]) // num_clients,
            "client_top (each)": models.count_params(client_params["top"]) // num_clients}
  counts = {}
  for g, group in enumerate(client_params):
    size = jax.tree.leaves(group)[0].shape[0]
    counts[f"client_bottom (each, group {g})"] = models.count_params(group["bottom"]) // size
    counts[f"client_top (each, group {g})"] = models.count_params(group["top"]) // size
  return counts


def make_step_context(config, federation: data.Federation) -> split.StepContext:
  """MTSL's static context for a config: split model, optimizers, task sizes and weights.

  The one place a config becomes a `split.StepContext`: training (`build`) and the
  smoothness estimate (`smoothness.config_smoothness`) measure the same model, weights
  and learning rates.

  Args:
    config: a validated config (`split`, `model`, both optimizers, batch size).
    federation: the clients' data; its label spaces size the head, its train counts give
      the 'data_size' task weights.

  Returns:
    The StepContext. With `config.model.client_width_groups` its model is a
    `client_groups.GroupedSplitModel`.
  """
  setup = task_setup(config, federation)
  multipliers = np.asarray(config.split.client_lr_multipliers or (1.0,) * setup.num_clients,
                           np.float64)
  if config.split.client_lr_scaling == "data_size":  # n_m / mean n
    counts = np.asarray(federation.train_counts, np.float64)
    multipliers = multipliers * counts / counts.mean()
  return split.StepContext(
      split=client_groups.make_split_model(config.model, config.split,
                                           int(setup.num_classes_M.max())),
      # A frozen server part takes zero updates: it stays at its initialization.
      server_tx=(optax.set_to_zero() if config.split.freeze_server else
                 optimizers.make_optimizer(config.server_optimizer, config.num_steps)),
      client_tx=optimizers.make_optimizer(config.client_optimizer, config.num_steps),
      num_classes_M=setup.classes,
      weights_M=setup.weights_M,
      lr_multipliers_M=jnp.asarray(multipliers, jnp.float32),
      batch_size=config.batch_size,
      implementation=config.split.implementation,
      common_client_init=config.split.client_init == "common",
      defences=cut_defences.CutDefences.from_config(config.privacy))


def build(config, federation: data.Federation) -> Algorithm:
  """MTSL from a validated config and its federation.

  Args:
    config: experiment config (`split`, `model`, both optimizers, batch size, seed).
    federation: the clients' data; its label spaces size the head.

  With `config.model.client_width_groups` the model is a `client_groups.GroupedSplitModel`
  and the client side of the state a tuple over groups; the step is the same.

  Returns:
    An Algorithm whose state is a `split_state.SplitState`.
  """
  ctx = make_step_context(config, federation)
  num_classes_M = np.asarray(federation.num_classes, np.int32)
  num_clients = len(num_classes_M)
  input_shape = tuple(federation.input_shape)
  init_state = lambda: split.init_state(ctx, config.seed, input_shape)

  abstract = jax.eval_shape(init_state)
  x_shape = jax.ShapeDtypeStruct((num_clients, config.batch_size) + input_shape, jnp.float32)
  y_shape = jax.ShapeDtypeStruct((num_clients, config.batch_size), jnp.int32)
  traffic = ledger.split_step_traffic(ctx, abstract, x_shape, y_shape)

  param_counts = {"server": models.count_params(abstract.server.params),
                  **_client_param_counts(abstract.clients.params, num_clients)}
  # Clients of different widths keep their parameters per width group (a tuple of
  # stacks, not one client axis): their logits take all clients, in order.
  stacked = not isinstance(ctx.split, client_groups.GroupedSplitModel)

  def logits(state, x, clients=None):
    if clients is not None and not stacked:
      raise ValueError("MTSL with client width groups evaluates all clients at once")
    return ctx.split.logits(state.server.params, take_clients(state.clients.params, clients),
                            x)

  return Algorithm(
      name="mtsl", init_state=init_state,
      step=split.make_train_step(ctx, data.sample_batches), logits=logits,
      traffic=traffic, param_counts=param_counts, num_classes_M=num_classes_M,
      client_subsets=stacked)
