"""The messages an MTSL run sends, recorded over a window of its real training steps.

An attack in this package reads what the honest-but-curious server of docs/privacy.md
sees: the protocol's messages (`split_gradients.protocol_gradients`, the same ones the
ledger counts), with the run's defences applied. `record_window` continues a run from its
state at step t for W steps with the run's own jitted step, and at each step also
computes that step's messages from the same state, minibatch and defence key, so the
window holds exactly what the server received at steps t..t+W-1 (tests check that the
state after the window is the training loop's). Recording costs one more forward and
backward pass per recorded step; training never records.
"""

import dataclasses

import jax
import numpy as np

from mtsl_jax import cut_defences, data, split, split_gradients
from mtsl_jax.algorithms import mtsl


@dataclasses.dataclass(frozen=True)
class Window:
  """W consecutive steps of one run, every client's examples and messages.

  Attributes:
    start_step: the step of the first recorded message (t).
    x: the clients' minibatch inputs, [M, W * B, ...] (step-major within a client).
    y: their labels [M, W * B].
    messages: name ('up/smashed', 'up/cut_gradients', ...) -> [M, W * B, ...], as the
      protocol sends them (defended).
  """
  start_step: int
  x: np.ndarray
  y: np.ndarray
  messages: dict[str, np.ndarray]


def _client_major(steps: list[np.ndarray]) -> np.ndarray:
  """W arrays [M, B, ...] -> one [M, W * B, ...]."""
  stacked = np.stack(steps, axis=1)  # [M, W, B, ...]
  return stacked.reshape((stacked.shape[0], -1) + stacked.shape[3:])


def record_window(config, state, federation: data.Federation,
                  num_steps: int) -> tuple[Window, object]:
  """Continues an MTSL run for `num_steps` steps, recording every step's messages.

  Args:
    config: the run's validated config (algorithm 'mtsl', its defences in `privacy`).
    state: the run's `split_state.SplitState` at step t (e.g. `TrainResult.state`).
    federation: the run's data (`data.build_federation(config.data, config.seed)`).
    num_steps: W, the steps to record (>= 1).

  Returns:
    (the Window of steps t..t+W-1, the state at step t+W).

  Raises:
    ValueError: a config of another algorithm, or num_steps < 1.
  """
  if config.algorithm != "mtsl":
    raise ValueError(f"record_window records MTSL's messages; config.algorithm is "
                     f"{config.algorithm!r}")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  ctx = mtsl.make_step_context(config, federation)
  train_data, _ = data.to_device(federation)
  step = split.make_train_step(ctx, data.sample_batches)

  @jax.jit
  def recorded_step(state):
    x, y = data.sample_batches(train_data, jax.random.fold_in(state.rng, state.step),
                               ctx.batch_size)
    key = cut_defences.step_key(state.rng, state.step) if ctx.defences.active else None
    messages = split_gradients.protocol_gradients(
        ctx.split, state.server.params, state.clients.params, x, y, ctx.num_classes_M,
        ctx.weights_M, defences=ctx.defences, key=key)[4]
    new_state, _ = step(state, train_data)
    return new_state, x, y, messages

  start = int(state.step)
  xs, ys, messages = [], [], []
  for _ in range(num_steps):
    state, x, y, sent = recorded_step(state)
    xs.append(np.asarray(x))
    ys.append(np.asarray(y))
    messages.append({k: np.asarray(v) for k, v in sent.items()})
  window = Window(start, _client_major(xs), _client_major(ys),
                  {k: _client_major([m[k] for m in messages]) for k in messages[0]})
  return window, state
