"""Losses and predictions of tasks whose label spaces differ in size.

Every task's model shares one head of the largest label space C over the tasks; task m
uses only its first `num_classes[m]` logits. The logits beyond a task's classes take no
part in its loss (zero probability, zero gradient) or its predictions. Every method
(MTSL, the baselines) and the evaluation compute their losses here, so a task's loss
means the same thing everywhere.

`num_classes` arguments broadcast against the logits without their class axis: a scalar
for one task's [B, C] logits, [M, 1] for all tasks' [M, B, C].
"""

import jax
import jax.numpy as jnp
import optax


def _own_classes(logits: jax.Array, num_classes) -> jax.Array:
  """True on each task's own classes, bool [..., C] (broadcastable to the logits)."""
  return jnp.arange(logits.shape[-1]) < jnp.expand_dims(num_classes, -1)


def masked_logits(logits: jax.Array, num_classes) -> jax.Array:
  """The logits with every class outside the task's label space at -1e9.

  exp(-1e9 - max) is exactly 0 in float32, so those classes get zero probability, and the
  `where` passes them zero gradient. (optax's `where=` mask computes the same loss and
  gradients, but not to the last bit of the loss: recorded runs changed, so it is not used.)

  Args:
    logits: [..., C].
    num_classes: label-space size, broadcastable to `logits`' shape without the class axis.

  Returns:
    The masked logits, [..., C].
  """
  return jnp.where(_own_classes(logits, num_classes), logits, -1e9)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes) -> jax.Array:
  """Cross-entropy of each example over its task's own label space.

  Args:
    logits: [..., C].
    labels: [...], each below its task's `num_classes`.
    num_classes: label-space size, broadcastable to `labels`' shape.

  Returns:
    The per-example losses, shaped like `labels`.
  """
  return optax.softmax_cross_entropy_with_integer_labels(masked_logits(logits, num_classes),
                                                         labels)


def masked_cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array,
                         num_classes: jax.Array) -> jax.Array:
  """Mean cross-entropy of one task's minibatch over its first `num_classes` logits.

  Args:
    logits_BxC: the task model's logits.
    labels_B: labels in [0, num_classes).
    num_classes: the task's label-space size (a scalar).

  Returns:
    The scalar mean loss.
  """
  return cross_entropy(logits_BxC, labels_B, num_classes).mean()


def masked_mean(values: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """The mean of `values` over `axis` where the bool `mask` is True (0 where it is nowhere).

  A partial minibatch (the last of a local epoch, `algorithms/local_training.py`) fills its
  empty slots with any example and masks them out here.

  Args:
    values: the values (bool counts as 0/1).
    mask: bool, broadcastable to `values`.
    axis: None (all) or the axes to average over.

  Returns:
    The masked mean.
  """
  total = jnp.sum(jnp.where(mask, values, 0.0), axis=axis)
  count = jnp.sum(jnp.broadcast_to(mask, jnp.shape(values)), axis=axis)
  return total / jnp.maximum(count, 1).astype(total.dtype)


def masked_predictions(logits: jax.Array, num_classes) -> jax.Array:
  """Argmax over each task's own label space.

  Args:
    logits: [..., C].
    num_classes: label-space size, broadcastable to `logits`' shape without the class axis.

  Returns:
    int predictions [...].
  """
  return jnp.argmax(jnp.where(_own_classes(logits, num_classes), logits, -jnp.inf), axis=-1)


def class_log_probs(logits: jax.Array, num_classes) -> jax.Array:
  """log p(y|x) over each task's own label space; the other classes get about -1e9.

  Args:
    logits: [..., C].
    num_classes: label-space size, broadcastable to `logits`' shape without the class axis.

  Returns:
    Log-probabilities [..., C]: a finite stand-in for log 0 outside the label space, so
    sums and log-sum-exps over them stay finite (FedEM mixes components with them).
  """
  return jax.nn.log_softmax(masked_logits(logits, num_classes), axis=-1)
