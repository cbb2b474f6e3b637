"""The split model: one block list cut into client bottom, server part and client top.

Task m's model is F_m = T_m ∘ G ∘ B_m: client bottom B_m(ψ_m^b), the server part G(φ)
shared by all tasks, and client top T_m(ψ_m^t). `config.split` cuts the block list of
`config.model` (`models.make_blocks`): the first `client_bottom_blocks` blocks form B, the
last `client_top_blocks` form T, the rest G; the orientation says which side holds the
input and the head (docs/algorithm.md). Client parameters are stacked along a leading
client axis [M, ...] and every client part is `jax.vmap`-ed; the server part runs once on
the stacked smashed data of all tasks. `client_groups.GroupedSplitModel` has the same
interface for clients of different widths.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtsl_jax import models

ORIENTATIONS = ("bottom", "top", "u_shaped")
PyTree = Any


@dataclasses.dataclass(frozen=True)
class SplitModel:
  """The three parts of every task model and where they run.

  Attributes:
    bottom: client input blocks B (empty in the 'top' orientation).
    server: the shared server part G.
    top: client head blocks T (empty in the 'bottom' orientation).
    orientation: 'bottom', 'top' or 'u_shaped'.
  """
  bottom: models.BlockStack
  server: models.BlockStack
  top: models.BlockStack
  orientation: str

  @property
  def client_has_bottom(self) -> bool:
    return bool(self.bottom.blocks)

  @property
  def server_computes_loss(self) -> bool:
    """True when the head is on the server, so labels travel uplink."""
    return not self.top.blocks

  def client_bottom(self, params: PyTree, x: jax.Array) -> jax.Array:
    """B_m for all clients: params stacked [M, ...], x [M, B, ...] -> smashed [M, B, ...]."""
    if not self.client_has_bottom:
      return x
    return jax.vmap(self.bottom.apply)(params, x)

  def server_part(self, params: PyTree, smashed: jax.Array) -> jax.Array:
    """G on the smashed data of all tasks at once: [M, B, ...] -> [M, B, ...]."""
    m, b = smashed.shape[:2]
    out = self.server.apply(params, smashed.reshape((m * b,) + smashed.shape[2:]))
    return out.reshape((m, b) + out.shape[1:])

  def client_top(self, params: PyTree, h: jax.Array) -> jax.Array:
    """T_m for all clients: stacked params, h [M, B, ...] -> logits [M, B, C]."""
    if self.server_computes_loss:
      return h
    return jax.vmap(self.top.apply)(params, h)

  def logits(self, server_params: PyTree, client_params: PyTree, x: jax.Array) -> jax.Array:
    """F_m(x_m) for every task: x [M, B, ...] -> logits [M, B, C]."""
    bottom, top = self.client_parts(client_params)
    return self.client_top(top, self.server_part(server_params, self.client_bottom(bottom, x)))

  # The client-parameter layout: one tree stacked over all M clients.

  def client_parts(self, client_params: PyTree) -> tuple[PyTree, PyTree]:
    """(bottom, top) parameters of all clients, as `client_bottom` / `client_top` take them."""
    return client_params["bottom"], client_params["top"]

  def join_client_parts(self, bottom: PyTree, top: PyTree) -> PyTree:
    """The inverse of `client_parts` (for gradients computed part by part)."""
    return {"bottom": bottom, "top": top}

  def init(self, key: jax.Array, input_shape: tuple[int, ...],
           num_clients: int) -> tuple[PyTree, PyTree]:
    """Initial (φ, ψ); see `init_params`."""
    return init_params(self, key, input_shape, num_clients)


def make_split_model(model_config, split_config, num_classes: int) -> SplitModel:
  """Cuts the block list of `model_config` as `split_config` says.

  Args:
    model_config: the `model` config section.
    split_config: the `split` config section (orientation and the two cuts).
    num_classes: head size, the largest label space over the tasks.

  Returns:
    A SplitModel: one client architecture (`model.client_width_groups` is not read;
    `client_groups.make_split_model` builds mixed widths).
  """
  return cut_blocks(models.make_blocks(model_config, num_classes), split_config)


def cut_blocks(blocks: list, split_config) -> SplitModel:
  """The SplitModel of a block list cut as `split_config` says (first b, last t blocks)."""
  b, t = split_config.client_bottom_blocks, split_config.client_top_blocks
  n = len(blocks)
  return SplitModel(bottom=models.BlockStack(tuple(blocks[:b])),
                    server=models.BlockStack(tuple(blocks[b:n - t])),
                    top=models.BlockStack(tuple(blocks[n - t:])),
                    orientation=split_config.orientation)


INIT_CLIENTS_PER_BATCH = 256


def init_params(split: SplitModel, key: jax.Array, input_shape: tuple[int, ...],
                num_clients: int, first_client: int = 0) -> tuple[PyTree, PyTree]:
  """Initial φ and stacked ψ; every client gets its own initialization.

  Args:
    split: the split model.
    key: PRNG key; server and clients use keys folded in from it.
    input_shape: shape of one example.
    num_clients: M.
    first_client: index of the first client; client m's key depends on its index alone,
      so a group of clients starting at `first_client` gets the parameters those clients
      would get in one stacked model of the same architecture.

  Returns:
    (server_params, client_params) with client leaves of leading size M.
  """
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)

  def init_part(module: nn.Module, k, inputs):
    if not module.blocks:
      return {}, inputs
    params = module.init(k, inputs)
    return params, jax.eval_shape(module.apply, params, inputs)

  def zeros_like_shape(s):
    return jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s

  k_server, k_clients = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  _, smashed = init_part(split.bottom, k_server, x)
  server_params, server_out = init_part(split.server, k_server, zeros_like_shape(smashed))
  server_out = zeros_like_shape(server_out)

  def init_client(k):
    bottom, _ = init_part(split.bottom, jax.random.fold_in(k, 0), x)
    top, _ = init_part(split.top, jax.random.fold_in(k, 1), server_out)
    return {"bottom": bottom, "top": top}

  client_keys = jax.vmap(lambda m: jax.random.fold_in(k_clients, m))(
      first_client + jnp.arange(num_clients))
  # Batches of clients in a loop rather than all at once: initialization's temporaries
  # (random bits, truncated-normal intermediates) would otherwise be several times the
  # whole client state, the peak memory of a run with many clients. Same values.
  return server_params, jax.lax.map(init_client, client_keys,
                                    batch_size=min(num_clients, INIT_CLIENTS_PER_BATCH))
