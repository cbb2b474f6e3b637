"""Sharding the client axis over a device mesh (one host or many).

Everything with a leading client axis [M, ...] — the clients' data, and the client part of
the state (parameters and optimizer states of all clients) — is split over a 1-D mesh
axis named 'clients'; everything else (the server's parameters and optimizer state, the
step, the key) is replicated. The jitted step is unchanged: XLA's SPMD partitioner runs
each device's clients locally and inserts the all-reduce that the server's gradient
(a sum over tasks) needs.

Arrays are placed with `jax.make_array_from_callback` from host copies, which is also what
a multi-host run needs: every process builds the same host data from the seed and hands
over the slices its own devices hold.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtsl_jax import validation

CLIENT_AXIS = "clients"
PyTree = Any


def client_mesh(client_devices: int, num_clients: int) -> Mesh | None:
  """The mesh for `config.parallel.client_devices`, or None for a single device.

  Args:
    client_devices: 1 (no sharding), 0 (all devices) or a device count.
    num_clients: M, which must be divisible by the number of devices.

  Returns:
    A 1-D Mesh over the first devices, or None.

  Raises:
    validation.ConfigError: too few devices, or M not divisible by their number.
  """
  available = jax.device_count()
  count = available if client_devices == 0 else client_devices
  if count == 1:
    return None
  if count > available:
    raise validation.ConfigError("parallel.client_devices", f"{count} devices asked for, "
                                 f"{available} present ({jax.devices()[0].platform})")
  if num_clients % count:
    raise validation.ConfigError("parallel.client_devices", f"data.num_clients ({num_clients}) "
                                 f"must be divisible by the number of devices ({count})")
  return Mesh(np.asarray(jax.devices()[:count]), (CLIENT_AXIS,))


def _place(x, sharding: NamedSharding) -> jax.Array:
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_clients(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of `tree` with its leading (client) axis split over the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))
  return jax.tree.map(lambda x: _place(x, sharding), tree)


def shard_state(state: PyTree, mesh: Mesh, num_clients: int) -> PyTree:
  """Shards every state leaf with a leading client axis; replicates the others.

  A leaf counts as per-client when its leading dimension is M (all algorithms stack
  client parameters, optimizer states and mixture weights that way). A server leaf whose
  first dimension happens to equal M is sharded too: that changes only its placement,
  not any result, since XLA keeps the computation equivalent for any sharding.

  Args:
    state: any algorithm's state pytree.
    mesh: the client mesh.
    num_clients: M.

  Returns:
    The placed state.
  """
  split_axis = NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))
  whole = NamedSharding(mesh, PartitionSpec())
  per_client = lambda x: np.ndim(x) > 0 and np.shape(x)[0] == num_clients
  return jax.tree.map(lambda x: _place(x, split_axis if per_client(x) else whole), state)
