"""The interface every training algorithm implements."""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mtsl_jax import ledger

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Algorithm:
  """What the training loop needs from a method.

  Attributes:
    name: the `config.algorithm` value.
    init_state: `() -> state`, the initial state pytree (deterministic from the seed).
    step: pure `(state, train_data) -> (state, metrics)`, see `split.make_train_step`.
    logits: `(state, x [S, B, ...], clients=None) -> logits [S, B, C]`: the task models
      of the clients `clients` (int32 [S], positions on the client axis; evaluation
      groups clients by test-set size) on their examples, or of all M clients (S = M)
      when None. Per-client state is selected with `take_clients`.
    traffic: exact bytes per step per client.
    param_counts: parameter counts by side, for the start-of-run report.
    num_classes_M: label-space size per task.
    client_subsets: whether `logits` takes a subset of the clients (`clients`); False
      where the client parameters are not one stacked client axis (MTSL with client
      width groups), which evaluation then runs on all clients at once.
  """
  name: str
  init_state: Callable[[], PyTree]
  step: Callable
  logits: Callable
  traffic: ledger.StepTraffic
  param_counts: dict[str, int]
  num_classes_M: np.ndarray
  client_subsets: bool = True


def take_clients(tree: PyTree, clients: jax.Array | None) -> PyTree:
  """The rows `clients` of every leaf's leading client axis; all of `tree` when None.

  Args:
    tree: per-client leaves, each [M, ...].
    clients: int32 [S] positions on the client axis, or None.

  Returns:
    `tree` with every leaf [S, ...] (a gather), or `tree` itself.
  """
  if clients is None:
    return tree
  return jax.tree.map(lambda p: jnp.take(p, clients, axis=0), tree)


def task_weights(scheme: str, train_counts_M: np.ndarray) -> np.ndarray:
  """w_m of the objective: 'uniform' (1/M) or 'data_size' (n_m / Σ n)."""
  counts = np.asarray(train_counts_M, np.float64)
  w = np.full_like(counts, 1.0 / len(counts)) if scheme == "uniform" else counts / counts.sum()
  return w.astype(np.float32)


def aggregation_weights(config, federation) -> jax.Array:
  """The FedAvg family's averaging weights w_m on the device, float32 [M].

  FedAvg, FedRep, FedEM and SplitFed weight their averages (and their round's 'loss')
  by `config.fl.aggregation_weights`: 'data_size' (n_m / Σ n over the train examples, as
  standard FedAvg; the default) or 'uniform' (1/M). Not `config.split.task_weights`, the
  weights of MTSL's objective (and centralized's), so each family keeps its own default.
  """
  return jnp.asarray(task_weights(config.fl.aggregation_weights, federation.train_counts))


class TaskSetup(NamedTuple):
  """What every algorithm derives from the federation before building its model.

  Attributes:
    num_classes_M: label-space size per task, int32 numpy [M] (sizes the head).
    num_clients: M.
    input_shape: shape of one example.
    weights_M: task weights w_m on the device, float32 [M].
    classes: `num_classes_M` on the device, for the masked losses.
  """
  num_classes_M: np.ndarray
  num_clients: int
  input_shape: tuple[int, ...]
  weights_M: jax.Array
  classes: jax.Array


def task_setup(config, federation) -> TaskSetup:
  """The TaskSetup of a validated config and its `data.Federation`."""
  num_classes_M = np.asarray(federation.num_classes, np.int32)
  return TaskSetup(
      num_classes_M=num_classes_M, num_clients=len(num_classes_M),
      input_shape=tuple(federation.input_shape),
      weights_M=jnp.asarray(task_weights(config.split.task_weights, federation.train_counts)),
      classes=jnp.asarray(num_classes_M))
