"""Full (unsplit) models trained by local SGD: the client work of the federated baselines.

FedAvg, FedRep, FedEM, local-only and centralized training all run the whole block list of
`config.model` on a client. This module holds what they share:

  * `make_full_model` / `init_model`: the model as one `BlockStack` and its parameters;
  * `draw_batches`: K minibatches per client for one round, on the device;
  * `client_loss`: a task's masked cross-entropy (optionally example-weighted);
  * `local_sgd`: K optimizer steps from a FRESH optimizer state (`lax.scan`); callers vmap
    it over clients (and, in FedEM, over components).

Keys: round t's local step k draws client m's minibatch from
`fold_in(fold_in(batch_key, k), m)` (`data.sample_batches`), so no key is used twice.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from mtsl_jax import data, models, task_losses

PyTree = Any


def make_full_model(model_config, num_classes: int) -> models.BlockStack:
  """All blocks of `model_config` as one module; the head has `num_classes` outputs."""
  return models.BlockStack(tuple(models.make_blocks(model_config, num_classes)))


def init_model(module: models.BlockStack, key: jax.Array, input_shape: tuple[int, ...]):
  """Parameters of `module` for inputs of `input_shape` ({} for an empty stack).

  Args:
    module: a BlockStack.
    key: PRNG key.
    input_shape: shape of one input of this module.

  Returns:
    The parameter pytree.
  """
  if not module.blocks:
    return {}
  return module.init(key, jnp.zeros((1,) + tuple(input_shape), jnp.float32))


def output_shape(module: models.BlockStack, params: PyTree,
                 input_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Shape of one output of `module` (its input shape for an empty stack)."""
  if not module.blocks:
    return tuple(input_shape)
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  return tuple(jax.eval_shape(module.apply, params, x).shape[1:])


def draw_batches(train_data: data.ClientArrays, key: jax.Array, num_steps: int,
                 batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Every client's minibatches for `num_steps` local steps.

  Args:
    train_data: padded client arrays.
    key: this round's batch key; local step k uses `fold_in(key, k)`.
    num_steps: K.
    batch_size: B.

  Returns:
    (x [M, K, B, ...], y [M, K, B]).
  """
  xs, ys = jax.vmap(lambda k: data.sample_batches(train_data, jax.random.fold_in(key, k),
                                                  batch_size))(jnp.arange(num_steps))
  return jnp.swapaxes(xs, 0, 1), jnp.swapaxes(ys, 0, 1)


def client_loss(logits_BxC: jax.Array, labels_B: jax.Array, num_classes: jax.Array,
                example_weights_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(loss, accuracy) of one client's minibatch.

  Args:
    logits_BxC: the model's logits.
    labels_B: labels in [0, num_classes).
    num_classes: the task's label-space size.
    example_weights_B: None for the mean cross-entropy; otherwise the loss is
      mean_i(weight_i * CE_i) (FedEM's responsibility-weighted loss).

  Returns:
    (scalar loss, scalar accuracy).
  """
  if example_weights_B is None:
    loss = task_losses.masked_cross_entropy(logits_BxC, labels_B, num_classes)
  else:
    per_example = task_losses.cross_entropy(logits_BxC, labels_B, num_classes)
    loss = jnp.mean(example_weights_B * per_example)
  acc = jnp.mean(task_losses.masked_predictions(logits_BxC, num_classes) == labels_B)
  return loss, acc


def local_sgd(loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, jax.Array]],
              params: PyTree, tx: optax.GradientTransformation,
              batches: PyTree) -> tuple[PyTree, jax.Array, jax.Array]:
  """K steps of `tx` on `params`, starting from a fresh optimizer state.

  FL clients do not keep optimizer state between rounds (they may not be sampled again
  for a long time), so every round starts the optimizer afresh.

  Args:
    loss_fn: `(params, batch) -> (loss, accuracy)`.
    params: the starting parameters.
    tx: the optimizer.
    batches: a pytree whose leaves have a leading axis of K (one batch per step).

  Returns:
    (params after K steps, losses [K], accuracies [K]); step k's loss is measured before
    its update.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def one_step(carry, batch):
    p, opt_state = carry
    (loss, acc), g = grad_fn(p, batch)
    updates, opt_state = tx.update(g, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), (loss, acc)

  (params, _), (losses, accs) = jax.lax.scan(one_step, (params, tx.init(params)), batches)
  return params, losses, accs


def init_key(seed: int, index: int = 0) -> jax.Array:
  """The key that initializes model `index` of a run (FedEM's component index; 0 otherwise).

  Every full-model baseline starts from the same parameters for the same seed, so their
  comparisons (and the known-answer tests) start from one point.
  """
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0), index)


def run_key(seed: int) -> jax.Array:
  """The base key of a run's per-round randomness, as in MTSL (`split.init_state`)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def apply_to_all(module: models.BlockStack, params: PyTree, x: jax.Array) -> jax.Array:
  """One shared model on every client's examples: x [M, B, ...] -> [M, B, ...]."""
  m, b = x.shape[:2]
  out = module.apply(params, x.reshape((m * b,) + x.shape[2:]))
  return out.reshape((m, b) + out.shape[1:])
