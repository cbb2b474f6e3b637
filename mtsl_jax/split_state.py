"""The state pytrees of the methods, and the layout of MTSL's client trees.

`SideState` (parameters and optimizer state of one side) is the building block of every
method's state; `SplitState` is MTSL's. A client tree (parameters, gradients, updates,
optimizer states) is stacked over the clients, every leaf [M, ...], or, with client groups
of different widths (`client_groups.py`), a tuple over groups of stacked trees in client
order. `map_clients`, `scale_clients` and `per_client_norms` are the only functions that
look at which, so the gradients and the step (`split_gradients.py`, `split.py`) are
written once for both. `all_finite` is the finiteness check of any state or update.
"""

import itertools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class SideState:
  """Parameters and optimizer state of one side (server, or all clients stacked)."""
  params: PyTree
  opt_state: PyTree


@flax.struct.dataclass
class SplitState:
  """Everything that changes during MTSL training, as one pytree.

  Attributes:
    step: int32 scalar, the number of steps taken.
    rng: the run's base PRNG key; step t uses `fold_in(rng, t)`, so no key is reused and a
      resumed run draws exactly the batches an uninterrupted one would.
    server: φ and the server optimizer state.
    clients: ψ_1..ψ_M as {'bottom': ..., 'top': ...} and the client optimizer states,
      every leaf with a leading client axis of size M; with client groups
      (`client_groups.py`) a tuple over groups of such trees, group g's leaves [M_g, ...].
  """
  step: jax.Array
  rng: jax.Array
  server: SideState
  clients: SideState


def _per_client_scale(tree: PyTree, scale_M: jax.Array) -> PyTree:
  return jax.tree.map(lambda g: g * scale_M.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
                      tree)


# The three functions below are the only ones that look at the layout (module docstring); a
# Python loop over the (few) groups runs at trace time, inside the one jitted step.


def map_clients(fn: Callable, client_tree: PyTree, *others: PyTree) -> tuple:
  """`fn` vmapped over the clients of each group.

  Args:
    fn: one client's slices -> a TUPLE of output trees (e.g. an optimizer's update).
    client_tree: a client tree; its layout (stacked or grouped) decides the others'.
    *others: trees laid out the same way (e.g. optimizer states: one per group).

  Returns:
    The tuple of `fn`'s outputs, each laid out like `client_tree`.
  """
  if not isinstance(client_tree, tuple):
    return jax.vmap(fn)(client_tree, *others)
  per_group = [jax.vmap(fn)(*trees) for trees in zip(client_tree, *others)]
  return tuple(tuple(outputs) for outputs in zip(*per_group))


def scale_clients(client_tree: PyTree, scale_M: jax.Array) -> PyTree:
  """Client m's slice of a client tree times scale_M[m] (scale_M in client order)."""
  if not isinstance(client_tree, tuple):
    return _per_client_scale(client_tree, scale_M)
  sizes = [jax.tree.leaves(t)[0].shape[0] for t in client_tree]
  starts = [0, *itertools.accumulate(sizes)]
  return tuple(_per_client_scale(t, scale_M[s:s + n])
               for t, s, n in zip(client_tree, starts, sizes))


def per_client_norms(client_tree: PyTree) -> jax.Array:
  """The norm of each client's slice of a client tree, float [M] in client order."""
  if not isinstance(client_tree, tuple):
    return jax.vmap(optax.tree.norm)(client_tree)
  return jnp.concatenate([jax.vmap(optax.tree.norm)(t) for t in client_tree])


def all_finite(tree: PyTree) -> jax.Array:
  """True when every entry of every floating leaf of `tree` is finite (True if none)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.ones((), bool)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
