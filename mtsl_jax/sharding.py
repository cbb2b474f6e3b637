"""Sharding the client axis over a device mesh (one host or many).

Everything with a leading client axis [M, ...] — the clients' data, and the client part of
the state (parameters and optimizer states of all clients) — is split over a 1-D mesh
axis named 'clients'; everything else (the server's parameters and optimizer state, the
step, the key) is replicated. The jitted step is unchanged: XLA's SPMD partitioner runs
each device's clients locally and inserts the all-reduce that the server's gradient
(a sum over tasks) needs.

Arrays are placed with `jax.make_array_from_callback` from host copies, which is also what
a multi-host run needs: every process builds the same host data from the seed and hands
over the slices its own devices hold. In such a run the mesh must span every process's
devices, and results come back to the host through `to_host` (a sharded array's other
slices live in other processes).
"""

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtsl_jax import errors

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
    errors.ConfigError: too few devices, M not divisible by their number, or a
      multi-process run not using all devices.
  """
  available = jax.device_count()  # all processes' devices in a multi-process run
  count = available if client_devices == 0 else client_devices
  if jax.process_count() > 1 and count != available:
    # Every process must hold some clients: a process outside the mesh would have
    # nothing to run, and one-device runs on every process would duplicate each other.
    raise errors.ConfigError("parallel.client_devices", f"a multi-process run shards over "
                             f"all {available} devices of its {jax.process_count()} "
                             f"processes: use 0 or {available}, not {client_devices}")
  if count == 1:
    return None
  if count > available:
    raise errors.ConfigError("parallel.client_devices", f"{count} devices asked for, "
                             f"{available} present ({jax.devices()[0].platform})")
  if num_clients % count:
    raise errors.ConfigError("parallel.client_devices", f"data.num_clients ({num_clients}) "
                             f"must be divisible by the number of devices ({count})")
  return Mesh(np.asarray(jax.devices()[:count]), (CLIENT_AXIS,))


def _place(x, sharding: NamedSharding) -> jax.Array:
  host = np.asarray(jax.device_get(x))
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_clients(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places every leaf of `tree` with its leading (client) axis split over the mesh."""
  sharding = NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))
  return jax.tree.map(lambda x: _place(x, sharding), tree)


def state_shardings(state: PyTree, mesh: Mesh | None, num_clients: int) -> PyTree:
  """The placement of every state leaf: split on a leading client axis, else replicated.

  A leaf counts as per-client when its leading dimension is M (all algorithms stack
  client parameters, optimizer states and mixture weights that way). A server leaf whose
  first dimension happens to equal M is sharded too: that changes only its placement,
  not any result, since XLA keeps the computation equivalent for any sharding.

  Args:
    state: any algorithm's state pytree, or its `jax.eval_shape`.
    mesh: the client mesh, or None: everything on the first local device.
    num_clients: M.

  Returns:
    A pytree of shardings with the structure of `state`, for `jax.jit`'s out_shardings
    and for restoring a checkpoint straight into place (from whatever devices wrote it:
    orbax refuses a checkpoint of another topology unless told the target placement).
  """
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda _: device, state)
  split_axis = NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))
  whole = NamedSharding(mesh, PartitionSpec())
  per_client = lambda x: len(x.shape) > 0 and x.shape[0] == num_clients
  return jax.tree.map(lambda x: split_axis if per_client(x) else whole, state)


def to_host(tree: PyTree) -> PyTree:
  """`jax.device_get` that also works on arrays spanning other processes' devices.

  Replicated arrays are read from a local copy; sharded ones are gathered from all
  processes (a collective: every process must call this at the same point, as the
  training loop does).

  Args:
    tree: a pytree of arrays (jax or numpy) and Python values.

  Returns:
    The same structure with every jax.Array as a full numpy array, on every process.
  """
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return multihost_utils.process_allgather(x, tiled=True)
    return jax.device_get(x)
  return jax.tree.map(fetch, tree)
