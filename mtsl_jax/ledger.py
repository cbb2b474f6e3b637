"""The communication ledger: exact bytes each client sends and receives per step.

Bytes are counted from the real message arrays of `split_gradients.protocol_gradients` (their
shapes and dtypes), never from a formula written separately. Message shapes do not depend
on values, so they are read once with `jax.eval_shape` and the per-step counts are exact
for every step of a run; the training loop multiplies them by the steps taken.
"""

import dataclasses

import jax
import numpy as np

from mtsl_jax import split_gradients


@dataclasses.dataclass(frozen=True)
class StepTraffic:
  """Bytes per step, per client, and which messages make them up.

  Attributes:
    uplink_M: bytes client m sends to the server in one step, [M]: exact integers, or
      expected values (float) for methods that sample clients each round.
    downlink_M: bytes the server sends to client m in one step, [M], likewise.
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
    return split_gradients.protocol_gradients(ctx.split, sp, cp, x, y, ctx.num_classes_M,
                                    ctx.weights_M)[4]

  shapes = jax.eval_shape(messages, state.server.params, state.clients.params, x_shape,
                          y_shape)
  return traffic_from_messages(shapes)


# ---- model exchanges (the federated baselines) -------------------------------------------


def pytree_bytes(tree) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf of `tree`: size × dtype size."""
  return int(sum(int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
                 for leaf in jax.tree.leaves(tree)))


def exchange_traffic(messages: dict, num_clients: int,
                     participation: float = 1.0) -> StepTraffic:
  """The ledger of one round of model exchanges, as expected bytes per client.

  A sampled client receives and sends each message once per round. With client sampling
  (S of M clients per round) a client takes part with probability S / M, so its expected
  bytes per round are S / M times the message bytes; summed over clients this is exactly
  the S clients' bytes, so cumulative totals are exact (the per-client values are then
  fractional, float64).

  Args:
    messages: 'up/<name>' or 'down/<name>' -> the pytree ONE client sends or receives
      (arrays or ShapeDtypeStructs, no client axis).
    num_clients: M.
    participation: S / M, the probability that a client takes part in a round.

  Returns:
    StepTraffic for one round.
  """
  up, down, described = 0, 0, {}
  for name, tree in messages.items():
    direction = name.split("/", 1)[0]
    if direction not in ("up", "down"):
      raise ValueError(f"message names start with 'up/' or 'down/', got {name!r}")
    if direction == "up":
      up += pytree_bytes(tree)
    else:
      down += pytree_bytes(tree)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      described[name + jax.tree_util.keystr(path)] = (tuple(leaf.shape),
                                                       np.dtype(leaf.dtype).name)
  dtype = np.int64 if participation == 1.0 else np.float64
  return StepTraffic(np.full(num_clients, up * participation, dtype),
                     np.full(num_clients, down * participation, dtype), described)


def scale_traffic(traffic: StepTraffic, factor) -> StepTraffic:
  """`traffic` repeated `factor` times (e.g. K split steps per round, or S / M of them);
  `factor` is one number, or one per client [M] (SplitFed's local epochs)."""
  factor = np.asarray(factor, np.float64)
  dtype = np.int64 if np.all(factor == np.round(factor)) else np.float64
  return StepTraffic((traffic.uplink_M * factor).astype(dtype),
                     (traffic.downlink_M * factor).astype(dtype), dict(traffic.messages))


def sum_traffic(*parts: StepTraffic) -> StepTraffic:
  """The ledger of several kinds of traffic in the same step (their message names differ)."""
  up = sum(p.uplink_M for p in parts)
  down = sum(p.downlink_M for p in parts)
  messages = {}
  for p in parts:
    messages.update(p.messages)
  return StepTraffic(up, down, messages)


def no_traffic(num_clients: int) -> StepTraffic:
  """Nothing travels (centralized training, local-only training)."""
  return StepTraffic(np.zeros(num_clients, np.int64), np.zeros(num_clients, np.int64), {})
