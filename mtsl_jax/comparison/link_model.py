"""Wall-clock time of training under a network link model, from message sizes and counts.

The comparison reports time to a target accuracy under stated links (e.g. 1, 10 and 100
Mbit/s with 50 ms round-trip latency), computed, not measured on a network:

  * every client has its own link to the server, of `bits_per_second` each way, and the
    server's link is not the bottleneck (clients send and receive in parallel);
  * a step is a sequence of EXCHANGES: the messages one side sends before it must wait for
    the other. Consecutive messages in the same direction (e.g. smashed data and labels
    going up together) form one exchange. An exchange costs one one-way latency
    (round-trip / 2) plus the time to transmit the largest client's bytes in it;
  * computation and communication do not overlap: a step costs its measured compute time
    (`timing.jsonl` of the run, on the machine that ran it) plus its exchanges.

So MTSL's u_shaped step (smashed data up, activations down, cut gradients up, cut
gradients down) pays four latencies per step, FedAvg's round (model down, delta up) two
per round of K local steps. These are the simplifications the report states.
"""

import dataclasses
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Link:
  """A client's network link.

  Attributes:
    name: how tables name it, e.g. '10 Mbit/s, 50 ms'.
    bits_per_second: bandwidth, each way.
    round_trip_seconds: round-trip latency.
  """
  name: str
  bits_per_second: float
  round_trip_seconds: float


# The links the comparison reports.
LINKS = (Link("1 Mbit/s, 50 ms", 1e6, 0.05), Link("10 Mbit/s, 50 ms", 1e7, 0.05),
         Link("100 Mbit/s, 50 ms", 1e8, 0.05))


def exchanges(messages: Sequence[tuple[str, float]]) -> list[float]:
  """Groups a step's messages, in protocol order, into sequential exchanges.

  Args:
    messages: (direction, bytes) per message, direction 'up' or 'down'; bytes are one
      client's (the largest client's, for clients of different sizes).

  Returns:
    The bytes of each exchange: consecutive messages in one direction summed.

  Raises:
    ValueError: a direction other than 'up' or 'down', or negative bytes.
  """
  out, last = [], None
  for direction, size in messages:
    if direction not in ("up", "down") or size < 0:
      raise ValueError(f"a message is ('up' | 'down', bytes >= 0), got {(direction, size)}")
    if direction == last:
      out[-1] += size
    else:
      out.append(float(size))
    last = direction
  return out


def exchange_seconds(size: float, link: Link) -> float:
  """One exchange: a one-way latency plus the transmission of `size` bytes."""
  return link.round_trip_seconds / 2 + 8 * size / link.bits_per_second


def step_seconds(exchange_bytes: Sequence[float], compute_seconds: float, link: Link) -> float:
  """One step (or round): its compute time plus each of its exchanges in turn.

  Args:
    exchange_bytes: `exchanges` of the step.
    compute_seconds: the step's measured compute time.
    link: the link model.

  Returns:
    Seconds per step.
  """
  return compute_seconds + sum(exchange_seconds(size, link) for size in exchange_bytes)


def time_to_target(steps: float, exchange_bytes: Sequence[float], compute_seconds: float,
                   link: Link) -> float:
  """Seconds to reach a target reached after `steps` steps (inf stays inf)."""
  if steps == float("inf"):
    return float("inf")
  return steps * step_seconds(exchange_bytes, compute_seconds, link)
