"""The communication ledger: exact bytes each client sends and receives per step.

Bytes are counted from the real message arrays of `split.protocol_gradients` (their
shapes and dtypes), never from a formula written separately. Message shapes do not depend
on values, so they are read once with `jax.eval_shape` and the per-step counts are exact
for every step of a run; the training loop multiplies them by the steps taken.
"""

import dataclasses

import jax
import numpy as np

from mtsl_jax import split


@dataclasses.dataclass(frozen=True)
class StepTraffic:
  """Bytes per step, per client, and which messages make them up.

  Attributes:
    uplink_M: bytes client m sends to the server in one step, int64 [M].
    downlink_M: bytes the server sends to client m in one step, int64 [M].
    messages: name -> (per-client shape, dtype name) of every message in one step.
  """
  uplink_M: np.ndarray
  downlink_M: np.ndarray
  messages: dict

  @property
  def total_per_step(self) -> int:
    return int(self.uplink_M.sum() + self.downlink_M.sum())

  def cumulative(self, steps: int) -> dict[str, float]:
    """Ledger metrics after `steps` steps (totals over clients, and the busiest client)."""
    up, down = self.uplink_M * steps, self.downlink_M * steps
    return {"comm/uplink_bytes": float(up.sum()), "comm/downlink_bytes": float(down.sum()),
            "comm/total_bytes": float(up.sum() + down.sum()),
            "comm/max_client_bytes": float((up + down).max())}


def traffic_from_messages(messages: dict) -> StepTraffic:
  """Counts bytes of one step's messages; each has a leading client axis.

  Args:
    messages: 'up/<name>' or 'down/<name>' -> array or ShapeDtypeStruct [M, ...].

  Returns:
    StepTraffic.
  """
  num_clients = next(iter(messages.values())).shape[0]
  up, down = np.zeros(num_clients, np.int64), np.zeros(num_clients, np.int64)
  described = {}
  for name, msg in messages.items():
    per_client = int(np.prod(msg.shape[1:], dtype=np.int64)) * np.dtype(msg.dtype).itemsize
    direction = name.split("/", 1)[0]
    if direction not in ("up", "down"):
      raise ValueError(f"message names start with 'up/' or 'down/', got {name!r}")
    (up if direction == "up" else down)[:] += per_client
    described[name] = (tuple(msg.shape[1:]), np.dtype(msg.dtype).name)
  return StepTraffic(up, down, described)


def split_step_traffic(ctx, state, x_shape: jax.ShapeDtypeStruct,
                       y_shape: jax.ShapeDtypeStruct) -> StepTraffic:
  """The ledger of one MTSL step, read from the protocol's messages without running it.

  Args:
    ctx: `split.StepContext`.
    state: a SplitState (or its abstract shapes).
    x_shape, y_shape: abstract minibatch [M, B, ...] and labels [M, B].

  Returns:
    StepTraffic for one step.
  """
  def messages(sp, cp, x, y):
    return split.protocol_gradients(ctx.split, sp, cp, x, y, ctx.num_classes_M,
                                    ctx.weights_M)[4]

  shapes = jax.eval_shape(messages, state.server.params, state.clients.params, x_shape,
                          y_shape)
  return traffic_from_messages(shapes)
