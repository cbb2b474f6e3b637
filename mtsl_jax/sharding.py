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


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of `tree` whole on every device of the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(lambda x: _place(x, sharding), tree)


def shard_state(state: PyTree, mesh: Mesh) -> PyTree:
  """Shards a state's `clients` field (stacked over clients) and replicates the rest.

  States without a `clients` field are replicated whole: still correct, only without the
  memory saving.
  """
  if not hasattr(state, "clients"):
    return replicate(state, mesh)
  others = replicate(state.replace(clients=None), mesh)
  return others.replace(clients=shard_clients(state.clients, mesh))
