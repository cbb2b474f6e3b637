"""The interface every training algorithm implements."""

import dataclasses
from typing import Any, Callable

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
    logits: `(state, x [M, B, ...]) -> logits [M, B, C]`, every task's model.
    traffic: exact bytes per step per client.
    param_counts: parameter counts by side, for the start-of-run report.
    num_classes_M: label-space size per task.
    fingerprint: JSON-able description of what the state is for (checkpoint guard).
  """
  name: str
  init_state: Callable[[], PyTree]
  step: Callable
  logits: Callable
  traffic: ledger.StepTraffic
  param_counts: dict[str, int]
  num_classes_M: np.ndarray
  fingerprint: dict

