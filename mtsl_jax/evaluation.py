"""Per-task test evaluation: each client's model on its own test split.

Per-task test accuracy is the headline metric of the project: the mean over tasks, the
mean weighted by test-set size, and the worst task. Evaluation runs on the device over the
padded client test arrays in chunks of `eval_batch_size` examples per client (`lax.map`),
masking the padding, so memory stays bounded for any test-set size.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtsl_jax import task_losses

PyTree = Any


def pad_examples(x: jax.Array, y: jax.Array, multiple: int) -> tuple[jax.Array, jax.Array]:
  """Pads the example axis (axis 1) of client arrays to a multiple of `multiple`.

  numpy inputs are padded on the host (so that sharded runs place the padded arrays
  straight onto their devices), jax arrays where they live.
  """
  pad = (-x.shape[1]) % multiple
  if not pad:
    return x, y
  xp = np if isinstance(x, np.ndarray) else jnp
  x = xp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x, xp.pad(y, [(0, 0), (0, pad)])


def make_evaluate(logits_fn: Callable[[PyTree, jax.Array], jax.Array],
                  num_classes_M: jax.Array, chunk: int) -> Callable:
  """Builds a jitted `evaluate(state, x, y, counts) -> {'correct', 'loss_sum'}` ([M] each).

  Args:
    logits_fn: `(state, x [M, B, ...]) -> logits [M, B, C]`, the algorithm's task models.
    num_classes_M: label-space size per task.
    chunk: examples per client per chunk; x's example axis must be a multiple of it.

  Returns:
    The jitted evaluation function.
  """

  def evaluate(state, x, y, counts):
    num_chunks = x.shape[1] // chunk

    def one_chunk(i):
      xs = jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)
      ys = jax.lax.dynamic_slice_in_dim(y, i * chunk, chunk, axis=1)
      valid = (i * chunk + jnp.arange(chunk))[None, :] < counts[:, None]
      logits = logits_fn(state, xs)
      correct = (task_losses.masked_predictions(logits, num_classes_M[:, None]) == ys) & valid
      example_losses = task_losses.cross_entropy(logits, ys, num_classes_M[:, None])
      return correct.sum(axis=1), jnp.where(valid, example_losses, 0.0).sum(axis=1)

    correct, loss_sum = jax.lax.map(one_chunk, jnp.arange(num_chunks))
    return {"correct": correct.sum(axis=0), "loss_sum": loss_sum.sum(axis=0)}

  return jax.jit(evaluate)


def summarize(raw: dict, counts_M: np.ndarray) -> dict[str, Any]:
  """Headline metrics from the raw per-client sums (host numpy).

  Args:
    raw: output of `evaluate`, on the host.
    counts_M: test examples per client.

  Returns:
    'test/accuracy' and 'test/loss' per task, and the mean, size-weighted mean and worst
    task accuracy.
  """
  counts = np.asarray(counts_M, np.float64)
  acc = np.asarray(raw["correct"], np.float64) / counts
  loss = np.asarray(raw["loss_sum"], np.float64) / counts
  return {"test/accuracy": acc, "test/loss": loss,
          "test/accuracy_mean": float(acc.mean()),
          "test/accuracy_weighted": float(np.asarray(raw["correct"]).sum() / counts.sum()),
          "test/accuracy_worst": float(acc.min()),
          "test/loss_mean": float(loss.mean())}
