"""Full (unsplit) models trained by local SGD: the client work of the federated baselines.

FedAvg, FedRep, FedEM, local-only and centralized training all run the whole block list of
`config.model` on a client. This module holds what they share:

  * `make_full_model` / `init_model`: the model as one `BlockStack` and its parameters;
  * `draw_batches`: K minibatches per client for one round, on the device;
  * `plan_epochs`: a round of local EPOCHS instead (`config.fl.local_epochs`): every
    client's passes over its own examples without replacement, as example indices, with
    the steps and examples beyond a client's own masked;
  * `client_loss`: a task's masked cross-entropy (optionally example-weighted, optionally
    over the real examples of a partial batch only);
  * `local_sgd`: K optimizer steps from a FRESH optimizer state (`lax.scan`), optionally
    skipping masked steps; callers vmap it over clients (and, in FedEM, over components).

Keys: round t's local step k draws client m's minibatch from
`fold_in(fold_in(batch_key, k), m)` (`data.sample_batches`), so no key is used twice. With
local epochs, client m's epoch e orders its examples by `epoch_order`, from
`fold_in(fold_in(batch_key, e), m)`.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
                example_weights_B: jax.Array | None = None,
                example_mask_B: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(loss, accuracy) of one client's minibatch.

  Args:
    logits_BxC: the model's logits.
    labels_B: labels in [0, num_classes).
    num_classes: the task's label-space size.
    example_weights_B: None for the mean cross-entropy; otherwise the loss is
      mean_i(weight_i * CE_i) (FedEM's responsibility-weighted loss).
    example_mask_B: None when every example is real; otherwise (a local epoch's last,
      partial batch, or a masked step) the means run over the examples where it is True
      only, and are 0 when there are none.

  Returns:
    (scalar loss, scalar accuracy).
  """
  correct = task_losses.masked_predictions(logits_BxC, num_classes) == labels_B
  if example_mask_B is not None:
    per_example = task_losses.cross_entropy(logits_BxC, labels_B, num_classes)
    if example_weights_B is not None:
      per_example = example_weights_B * per_example
    return (task_losses.masked_mean(per_example, example_mask_B),
            task_losses.masked_mean(correct, example_mask_B))
  if example_weights_B is None:
    loss = task_losses.masked_cross_entropy(logits_BxC, labels_B, num_classes)
  else:
    per_example = task_losses.cross_entropy(logits_BxC, labels_B, num_classes)
    loss = jnp.mean(example_weights_B * per_example)
  return loss, jnp.mean(correct)


def local_sgd(loss_fn: Callable[[PyTree, PyTree], tuple[jax.Array, jax.Array]],
              params: PyTree, tx: optax.GradientTransformation,
              batches: PyTree, step_mask: jax.Array | None = None
              ) -> tuple[PyTree, jax.Array, jax.Array]:
  """K steps of `tx` on `params`, starting from a fresh optimizer state.

  FL clients do not keep optimizer state between rounds (they may not be sampled again
  for a long time), so every round starts the optimizer afresh.

  Args:
    loss_fn: `(params, batch) -> (loss, accuracy)`.
    params: the starting parameters.
    tx: the optimizer.
    batches: a pytree whose leaves have a leading axis of K (one batch per step).
    step_mask: None to take every step; otherwise bool [K], and a step where it is False
      changes nothing (parameters and optimizer state stay as they were: a local epoch's
      client with fewer steps than the round's largest) and reports loss and accuracy 0.

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

  carry = (params, tx.init(params))
  if step_mask is None:
    (params, _), (losses, accs) = jax.lax.scan(one_step, carry, batches)
    return params, losses, accs

  def masked_step(carry, inputs):
    batch, take = inputs
    new, (loss, acc) = one_step(carry, batch)
    # Computed and discarded: under vmap over clients both branches of a `cond` run anyway.
    return keep_if(take, new, carry), (jnp.where(take, loss, 0.0), jnp.where(take, acc, 0.0))

  (params, _), (losses, accs) = jax.lax.scan(masked_step, carry, (batches, step_mask))
  return params, losses, accs


def keep_if(take: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` where the scalar `take` is True, else `old` (leaf by leaf, same structure)."""
  return jax.tree.map(lambda a, b: jnp.where(take, a, b), new, old)


# ---- local epochs -------------------------------------------------------------------------


class EpochPlan(NamedTuple):
  """Every client's steps of one round of local epochs, as positions in its padded arrays.

  Client m takes k_m = ceil(n_m / B) x E steps (`epoch_steps`); the round has K = max_m k_m
  steps, and client m's steps from k_m on are masked. Epoch e of client m visits its n_m
  examples once, in the order `epoch_order` gives, in batches of B; the epoch's last batch
  holds the n_m mod B remaining examples (when B does not divide n_m) and its other slots
  are masked: a smaller batch, as PyTorch's DataLoader without drop_last.

  Attributes:
    index: int32 [M, K, B]: the example in each slot (a valid position even where masked).
    example_mask: bool [M, K, B]: the slot holds an example of that step.
    step_mask: bool [M, K]: client m takes step k (k < k_m).
  """
  index: jax.Array
  example_mask: jax.Array
  step_mask: jax.Array


def epoch_steps(train_counts_M, batch_size: int, epochs: int) -> np.ndarray:
  """k_m = ceil(n_m / B) x E, each client's local steps per round of E epochs (int64 [M])."""
  counts = np.asarray(train_counts_M, np.int64)
  return -(-counts // batch_size) * epochs


def max_epoch_steps(train_counts_M, batch_size: int, epochs: int) -> int:
  """K, the round's step count: the largest client's `epoch_steps`."""
  return int(epoch_steps(train_counts_M, batch_size, epochs).max())


def epoch_order(key: jax.Array, count: jax.Array, length: int) -> jax.Array:
  """A uniformly random order of the positions [0, count), then the padding.

  Position i gets the sort key `bits(fold_in(key, i))` (ties broken by position), so the
  order of the first `count` positions does not depend on `length`, the padded axis
  (which a replica group pads further), and a reference can recompute it position by
  position.

  Args:
    key: the epoch's key.
    count: n, the client's number of examples (traced).
    length: N >= n, the padded example axis.

  Returns:
    int32 [N]: its first n entries are a permutation of [0, n).
  """
  positions = jnp.arange(length)
  bits = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i)))(positions)
  # jnp.lexsort's last key sorts first: real positions before padding, then by bits.
  return jnp.lexsort((positions, bits, positions >= count)).astype(jnp.int32)


def plan_epochs(counts_M: jax.Array, key: jax.Array, length: int, num_steps: int,
                batch_size: int, epochs: int) -> EpochPlan:
  """Every client's round of `epochs` local epochs (see `EpochPlan`).

  Args:
    counts_M: n_m, each client's number of train examples.
    key: the round's batch key; client m's epoch e orders its examples with
      `epoch_order(fold_in(fold_in(key, e), m), n_m, length)`.
    length: N, the padded example axis of the client arrays.
    num_steps: K, the round's steps (`max_epoch_steps`).
    batch_size: B.
    epochs: E.

  Returns:
    The EpochPlan, with a leading client axis M.
  """
  def one_client(count, m):
    orders = jax.vmap(lambda e: epoch_order(
        jax.random.fold_in(jax.random.fold_in(key, e), m), count, length))(jnp.arange(epochs))
    per_epoch = (count + batch_size - 1) // batch_size
    k = jnp.arange(num_steps)
    epoch = jnp.minimum(k // per_epoch, epochs - 1)
    slot = (k % per_epoch)[:, None] * batch_size + jnp.arange(batch_size)  # [K, B]
    step_mask = k < per_epoch * epochs
    example_mask = (slot < count) & step_mask[:, None]
    index = orders[epoch[:, None], jnp.minimum(slot, length - 1)]
    return EpochPlan(index, example_mask, step_mask)

  return jax.vmap(one_client)(counts_M, jnp.arange(counts_M.shape[0]))


def epoch_sgd(loss_fn: Callable[[PyTree, PyTree, jax.Array], tuple[jax.Array, jax.Array]],
              params: PyTree, tx: optax.GradientTransformation, examples: PyTree,
              plan: EpochPlan) -> tuple[PyTree, jax.Array, jax.Array]:
  """`local_sgd` over one client's local epochs: step k trains on its planned examples.

  Args:
    loss_fn: `(params, batch, example_mask_B) -> (loss, accuracy)`, where `batch` is
      `examples` at the step's B positions and the mask marks the real ones.
    params: the starting parameters.
    tx: the optimizer (restarted).
    examples: one client's per-example arrays, a pytree of leaves [N, ...] (its inputs and
      labels, and FedEM's responsibilities).
    plan: that client's EpochPlan (no client axis).

  Returns:
    (params after its steps, losses [K], accuracies [K]; 0 at the masked steps).
  """
  def step_loss(p, step):
    index, example_mask = step
    return loss_fn(p, jax.tree.map(lambda a: a[index], examples), example_mask)

  return local_sgd(step_loss, params, tx, (plan.index, plan.example_mask), plan.step_mask)


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
