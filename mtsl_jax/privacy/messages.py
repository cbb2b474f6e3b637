"""The messages an MTSL run sends, recorded over a window of its real training steps.

An attack in this package reads what the honest-but-curious server of docs/privacy.md
sees: the protocol's messages (`split_gradients.protocol_gradients`, the same ones the
ledger counts), with the run's defences applied. `record_window` continues a run from its
state at step t for W steps with the run's own jitted step, and at each step also
computes that step's messages from the same state, minibatch and defence key, so the
window holds exactly what the server received at steps t..t+W-1 (tests check that the
state after the window is the training loop's). Recording costs one more forward and
backward pass per recorded step; training never records.

SplitFed (`record_splitfed_window`): each round starts from the global client-side
model, so the first split step of every client in a round sends B(global, x) on the
minibatch that step draws (the split step j = round x K draws it as MTSL's step j does);
a window of W rounds records those first-step messages (smashed data and labels, the
'bottom' cut) and advances the run by its own round step.
"""

import dataclasses

import jax
import numpy as np

import optax

from mtsl_jax import algorithms, cut_defences, data, split, split_gradients, split_model
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

  return _collect(recorded_step, state, num_steps)


def _collect(recorded_step, state, count: int) -> tuple[Window, object]:
  """Runs `recorded_step` (state -> state, x, y, messages) `count` times into a Window."""
  start = int(state.step)
  xs, ys, sent_all = [], [], []
  for _ in range(count):
    state, x, y, sent = recorded_step(state)
    xs.append(np.asarray(x))
    ys.append(np.asarray(y))
    sent_all.append({k: np.asarray(v) for k, v in sent.items()})
  window = Window(start, _client_major(xs), _client_major(ys),
                  {k: _client_major([m[k] for m in sent_all]) for k in sent_all[0]})
  return window, state


def record_splitfed_window(config, state, federation: data.Federation,
                           num_rounds: int) -> tuple[Window, object]:
  """Continues a SplitFed run for `num_rounds` rounds, recording each round's first
  split-step messages of every client.

  Args:
    config: the run's validated config (algorithm 'splitfed_v1' or 'splitfed_v2').
    state: the run's state at round t.
    federation: the run's data.
    num_rounds: W (>= 1).

  Returns:
    (the Window of rounds t..t+W-1, its start_step a round; the state at round t+W).

  Raises:
    ValueError: another algorithm, a client-held head (SplitFed cuts 'bottom' here), or
      num_rounds < 1.
  """
  if config.algorithm not in ("splitfed_v1", "splitfed_v2"):
    raise ValueError(f"record_splitfed_window records SplitFed's messages; "
                     f"config.algorithm is {config.algorithm!r}")
  if num_rounds < 1:
    raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
  algorithm = algorithms.build_algorithm(config, federation)
  model = split_model.make_split_model(config.model, config.split,
                                       int(max(federation.num_classes)))
  if not model.server_computes_loss:
    raise ValueError("record_splitfed_window records the 'bottom' cut (labels sent up)")
  train_data, _ = data.to_device(federation)
  num_clients = len(federation.train_x)

  @jax.jit
  def recorded_round(state):
    first = state.step * config.fl.local_steps  # the round's first split step
    x, y = data.sample_batches(train_data, jax.random.fold_in(state.rng, first),
                               config.batch_size)
    bottom = optax.tree.batch_shape(state.client_params, (num_clients,))["bottom"]
    sent = {"up/smashed": model.client_bottom(bottom, x), "up/labels": y}
    new_state, _ = algorithm.step(state, train_data)
    return new_state, x, y, sent

  return _collect(recorded_round, state, num_rounds)


def client_bottom(config, state, federation: data.Federation, client: int):
  """Client `client`'s bottom at `state`, inputs [k, ...] -> smashed data (jitted).

  MTSL: the client's own bottom; SplitFed: the global client-side model's. None when
  the run's clients hold no bottom ('top').
  """
  model = split_model.make_split_model(config.model, config.split,
                                       int(max(federation.num_classes)))
  if not model.client_has_bottom:
    return None
  if config.algorithm == "mtsl":
    params = jax.tree.map(lambda p: p[client], model.client_parts(state.clients.params)[0])
  else:
    params = state.client_params["bottom"]
  return jax.jit(lambda x: model.bottom.apply(params, x))
