"""The sequential exchanges of one loop step of each method, from its ledger's messages.

The link model (`link_model`) prices a step by its exchanges: the messages one side
sends before it must wait for the other. The ledger (`algorithms.*.traffic`) names every
message and its per-client shape but not the protocol's order, which is fixed per kind
of method and written down here:

  * a split step (MTSL, and each local step of SplitFed): smashed data and labels go up;
    with a U-shaped cut the server's top activations come down and the cut gradients of
    the client's head go up; the cut gradients of the client's bottom come down;
  * a round of model exchange (FedAvg, FedEM, FedRep): the model comes down, the client
    trains K local steps, its update goes up;
  * a SplitFed round: the client model comes down, K split steps, the update goes up.

Bytes are one client's (the ledger's per-client shapes): clients send in parallel over
their own links, and every client of these methods sends the same shapes.
"""

from typing import Sequence

import numpy as np

from mtsl_jax.comparison import link_model

# The split step's messages in protocol order (the ledger's names).
SPLIT_PROTOCOL = ("up/smashed", "up/labels", "down/activations", "up/cut_gradients",
                  "down/cut_gradients")


def message_bytes(shape: Sequence[int], dtype: str) -> int:
  """Bytes of one message of the given per-client shape and dtype."""
  return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def step_messages(messages: dict, local_steps: int | None) -> list[tuple[str, float]]:
  """One loop step's messages of one client, in protocol order.

  Args:
    messages: the ledger's `StepTraffic.messages`: name -> (per-client shape, dtype
      name); split-protocol messages have plain names (SPLIT_PROTOCOL), model messages
      name a pytree leaf ('down/global_model[...]', 'up/model_delta[...]').
    local_steps: K split steps per round for SplitFed; None for one split step (MTSL)
      or for methods without split messages.

  Returns:
    (direction, bytes) per message, in the order they travel.

  Raises:
    ValueError: a message name the protocol does not know.
  """
  split, model_down, model_up = {}, 0, 0
  for name, (shape, dtype) in messages.items():
    size = message_bytes(shape, dtype)
    if "[" in name:  # a model leaf
      if name.startswith("down/"):
        model_down += size
      else:
        model_up += size
    elif name in SPLIT_PROTOCOL:
      split[name] = size
    else:
      raise ValueError(f"unknown message {name!r}; known split messages: {SPLIT_PROTOCOL}")
  one_split_step = [(n.split("/")[0], float(split[n])) for n in SPLIT_PROTOCOL if n in split]
  if not model_down and not model_up:
    return one_split_step
  sequence = [("down", float(model_down))]
  sequence += one_split_step * (local_steps or 1)  # SplitFed's K split steps (else none)
  return sequence + [("up", float(model_up))]


def step_exchanges(messages: dict, local_steps: int | None) -> list[float]:
  """Bytes of each sequential exchange of one loop step (see `link_model.exchanges`)."""
  return link_model.exchanges(step_messages(messages, local_steps))
