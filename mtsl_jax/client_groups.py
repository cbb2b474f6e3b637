"""Clients of different widths: groups of identical client models in one MTSL step.

`config.model.client_width_groups = ((M_1, r_1), (M_2, r_2), ...)` divides the M clients,
in client order, into groups: the first M_1 clients form group 1, the next M_2 group 2,
and so on (Σ M_g = M). Every client of group g has the same client architecture: the
configured model with the width of each FREE client block multiplied by r_g (rounded, at
least 1). A client block is free when its width is internal to the client: every bottom
block but the last (whose output is the smashed data the server reads) and every top
block but the head (whose output is the logits). The cut shapes and the server part G are
the same for every group, so the server still sees all M tasks' smashed data.

This is the computation heterogeneity that federated averaging cannot handle (it averages
client models, which needs one shape); MTSL never averages client parameters, so clients of
different capacity train side by side. `()` (the default) is one stacked group: exactly
the single-architecture code path.

Layout: client parameters and optimizer states are a tuple over groups, group g's leaves
stacked [M_g, ...]. Each group's client blocks are `jax.vmap`-ed over its own clients; the
groups' smashed data (and head inputs) are concatenated in client order, so client m's data
row stays m. The Python loop over the (few) groups runs at trace time: one jitted step
holds every group. MTSL's gradients and step (`split_gradients.py`, `split.py`) run this
model unchanged through its methods and `split_state.map_clients` / `scale_clients` /
`per_client_norms`.
"""

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp

from mtsl_jax import models, split_model

PyTree = Any


def free_client_blocks(num_blocks: int, client_bottom_blocks: int,
                       client_top_blocks: int) -> list[int]:
  """Indices of the client blocks whose width a group may change.

  Args:
    num_blocks: blocks of the whole model.
    client_bottom_blocks, client_top_blocks: the cuts (b and t).

  Returns:
    Every bottom block but the last (its output is the cut) and every top block but the
    head, in block order; empty when the clients hold no block of free width.
  """
  b, t = client_bottom_blocks, client_top_blocks
  return [*range(b - 1), *range(num_blocks - t, num_blocks - 1)]


def scaled_width(width: int, multiplier: float) -> int:
  """A free block's width in a group: `round(width * multiplier)`, at least 1."""
  return max(1, round(width * multiplier))


@dataclasses.dataclass(frozen=True)
class GroupedSplitModel:
  """Task models whose client parts differ between groups of clients; one server part G.

  It has the interface of `split_model.SplitModel` that MTSL's gradients and step use; its
  client parameters are a tuple over groups.

  Attributes:
    groups: one SplitModel per group, in client order; they share the server blocks and
      the shapes at the cuts, and differ only in the widths of their free client blocks.
    sizes: M_g, clients per group; group g holds the sizes[g] clients after those of the
      groups before it.
  """
  groups: tuple[split_model.SplitModel, ...]
  sizes: tuple[int, ...]

  @property
  def orientation(self) -> str:
    return self.groups[0].orientation

  @property
  def client_has_bottom(self) -> bool:
    return self.groups[0].client_has_bottom

  @property
  def server_computes_loss(self) -> bool:
    """True when the head is on the server, so labels travel uplink."""
    return self.groups[0].server_computes_loss

  def _per_group(self, a_M: jax.Array) -> list[jax.Array]:
    """Group g's rows of a client-ordered array [M, ...] (static slices)."""
    starts = itertools.accumulate(self.sizes, initial=0)
    return [a_M[s:s + n] for s, n in zip(starts, self.sizes)]

  def client_bottom(self, params: tuple, x: jax.Array) -> jax.Array:
    """B_m for all clients: params a tuple over groups, x [M, B, ...] -> smashed [M, B, ...]."""
    if not self.client_has_bottom:
      return x
    return jnp.concatenate([g.client_bottom(p, x_g) for g, p, x_g in
                            zip(self.groups, params, self._per_group(x))])

  def server_part(self, params: PyTree, smashed: jax.Array) -> jax.Array:
    """G on the smashed data of all groups' tasks at once: [M, B, ...] -> [M, B, ...]."""
    return self.groups[0].server_part(params, smashed)

  def client_top(self, params: tuple, h: jax.Array) -> jax.Array:
    """T_m for all clients: params a tuple over groups, h [M, B, ...] -> logits [M, B, C]."""
    if self.server_computes_loss:
      return h
    return jnp.concatenate([g.client_top(p, h_g) for g, p, h_g in
                            zip(self.groups, params, self._per_group(h))])

  # F_m composed from the three parts exactly as for one stacked group: the method only
  # calls the parts above, so SplitModel's is reused rather than repeated.
  logits = split_model.SplitModel.logits

  def client_parts(self, client_params: tuple) -> tuple[tuple, tuple]:
    """(bottom, top) of all clients, each a tuple over groups."""
    parts = [g.client_parts(p) for g, p in zip(self.groups, client_params)]
    return tuple(b for b, _ in parts), tuple(t for _, t in parts)

  def join_client_parts(self, bottom: tuple, top: tuple) -> tuple:
    """The inverse of `client_parts`."""
    return tuple(g.join_client_parts(b, t) for g, b, t in zip(self.groups, bottom, top))

  def init(self, key: jax.Array, input_shape: tuple[int, ...],
           num_clients: int) -> tuple[PyTree, tuple]:
    """Initial (φ, ψ): φ as for one group, group g's ψ from its own clients' keys.

    Client m's key depends on m alone (`split_model.init_params`), so groups of the configured
    width start exactly where the single-group model starts.

    Args:
      key: PRNG key.
      input_shape: shape of one example.
      num_clients: M, which must be Σ M_g.

    Returns:
      (server_params, client_params as a tuple over groups).
    """
    if num_clients != sum(self.sizes):
      raise ValueError(f"{num_clients} clients, but the groups hold {sum(self.sizes)}")
    starts = itertools.accumulate(self.sizes, initial=0)
    inits = [split_model.init_params(g, key, input_shape, n, first_client=s)
             for g, n, s in zip(self.groups, self.sizes, starts)]
    # Every group computes the same φ (same key, server blocks and cut shape); keep one.
    return inits[0][0], tuple(client_params for _, client_params in inits)


def make_split_model(model_config, split_config,
                     num_classes: int) -> split_model.SplitModel | GroupedSplitModel:
  """The split model of a config: one stacked group, or `model.client_width_groups`.

  Args:
    model_config: the `model` config section (validated).
    split_config: the `split` config section.
    num_classes: head size, the largest label space over the tasks.

  Returns:
    `split_model.make_split_model`'s SplitModel when `client_width_groups` is `()`, else a
    GroupedSplitModel.
  """
  groups = tuple(model_config.client_width_groups)
  if not groups:
    return split_model.make_split_model(model_config, split_config, num_classes)
  blocks = models.make_blocks(model_config, num_classes)
  free = free_client_blocks(len(blocks), split_config.client_bottom_blocks,
                            split_config.client_top_blocks)

  def group_model(multiplier: float) -> split_model.SplitModel:
    scaled = [block.clone(features=scaled_width(block.features, multiplier)) if i in free
              else block for i, block in enumerate(blocks)]
    return split_model.cut_blocks(scaled, split_config)

  return GroupedSplitModel(groups=tuple(group_model(r) for _, r in groups),
                           sizes=tuple(int(n) for n, _ in groups))
