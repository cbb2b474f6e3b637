"""Where a cut puts the model: each side's share of the parameters and of the FLOPs.

A comparison of split methods states every cut with the share of the model each side
holds and computes, since "MTSL" with a client holding 80% of the parameters is a
different method in practice from one whose client holds the first convolution alone.
`block_costs` measures every block of a model once: its parameters (from the abstract
initialization) and its forward FLOPs per example (XLA's cost analysis of the lowered
block, so convolutions, pooling, normalization and activations are counted as compiled,
for every model family alike). `side_costs` sums them over a cut's client part (bottom
and top blocks) and server part.

FLOPs are per example and forward only; a training step costs about three times the
forward FLOPs on each side (forward, and a backward pass of twice the work), so the
shares hold for training too.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from mtsl_jax import models


@dataclasses.dataclass(frozen=True)
class BlockCost:
  """One block's parameters and forward FLOPs per example."""
  params: int
  flops: float


def block_costs(model_config: ml_collections.ConfigDict, input_shape: Sequence[int],
                num_classes: int) -> list[BlockCost]:
  """The parameters and forward FLOPs per example of each block of a model.

  Args:
    model_config: the `model` config section.
    input_shape: one example's shape.
    num_classes: the head's size.

  Returns:
    One BlockCost per block, in order (the last is the head).
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  costs = []
  for block in models.make_blocks(model_config, num_classes):
    params = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
    analysis = jax.jit(block.apply).lower(params, x).cost_analysis()
    costs.append(BlockCost(models.count_params(params), float(analysis["flops"])))
    x = jax.eval_shape(block.apply, params, x)
  return costs


@dataclasses.dataclass(frozen=True)
class SideCosts:
  """A cut's division of the model between one client and the server.

  Attributes:
    client_params, server_params: parameters of one client's part (bottom and top
      blocks) and of the server part.
    client_flops, server_flops: their forward FLOPs per example.
  """
  client_params: int
  server_params: int
  client_flops: float
  server_flops: float

  @property
  def client_param_share(self) -> float:
    return self.client_params / (self.client_params + self.server_params)

  @property
  def client_flop_share(self) -> float:
    return self.client_flops / (self.client_flops + self.server_flops)

  def describe(self) -> str:
    """E.g. 'client 0.1% of parameters, 9.6% of FLOPs; server 99.9%, 90.4%'."""
    return (f"client {100 * self.client_param_share:.1f}% of parameters, "
            f"{100 * self.client_flop_share:.1f}% of FLOPs; server "
            f"{100 * (1 - self.client_param_share):.1f}%, "
            f"{100 * (1 - self.client_flop_share):.1f}%")


def side_costs(costs: Sequence[BlockCost], client_bottom_blocks: int,
               client_top_blocks: int) -> SideCosts:
  """Sums block costs over a cut: the first `client_bottom_blocks` and the last
  `client_top_blocks` blocks are the client's, the rest the server's.

  Args:
    costs: `block_costs` of the model.
    client_bottom_blocks, client_top_blocks: the cut (the `split` config fields).

  Returns:
    The SideCosts of one client and the server.
  """
  n = len(costs)
  client = [c for i, c in enumerate(costs)
            if i < client_bottom_blocks or i >= n - client_top_blocks]
  server = [c for i, c in enumerate(costs)
            if client_bottom_blocks <= i < n - client_top_blocks]
  return SideCosts(sum(c.params for c in client), sum(c.params for c in server),
                   sum(c.flops for c in client), sum(c.flops for c in server))
