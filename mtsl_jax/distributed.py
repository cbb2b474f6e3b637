"""Multi-process (multi-host) runs: starting JAX's distributed runtime, and process 0.

In a multi-process run every process executes the same program (JAX is multi-controller):
each builds the same host data from the seed, places the slices its own devices hold, and
joins the same jitted computations over one mesh spanning all processes' devices
(`sharding.client_mesh`). `jax.distributed.initialize` must run before anything touches a
JAX backend, so launchers call `initialize` first thing. Only process 0 writes
config.json, metrics, timing and TensorBoard files and prints; every process takes part in
checkpointing (orbax writes each process's shards and coordinates the commit).

Two ways to start:

* auto-detection (`--distributed`): on Cloud TPU pods, SLURM and Open MPI jobs JAX reads
  the coordinator, the process count and the process id from the environment;
* manual (`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`), e.g. on
  plain machines or on one machine for tests. With `--distributed` these override parts
  of what is detected.

On CPU the cross-process collectives use gloo (jax's default for
`jax_cpu_collectives_implementation`), so a multi-process CPU run needs nothing else.
"""

import dataclasses
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from mtsl_jax import errors

DistributedSetupError = errors.DistributedSetupError  # defined in `errors.py`; public here too


@dataclasses.dataclass(frozen=True)
class DistributedArgs:
  """How this process joins a multi-process run (the launcher's flags).

  Attributes:
    auto: let JAX detect the cluster (TPU pod, SLURM, Open MPI); the other fields, where
      set, override the detected values.
    coordinator_address: HOST:PORT of process 0's coordinator service.
    num_processes: the number of processes.
    process_id: this process's index in [0, num_processes).
    local_device_ids: restrict this process to these local devices (e.g. one GPU each);
      integers, or their strings as a comma-separated flag gives them.
  """
  auto: bool = False
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: Sequence[int | str] | None = None

  @property
  def manual(self) -> bool:
    """Whether any explicit setting was given."""
    return any(v is not None for v in (self.coordinator_address, self.num_processes,
                                       self.process_id, self.local_device_ids))

  @property
  def enabled(self) -> bool:
    """Whether this is a multi-process run at all."""
    return self.auto or self.manual


def validate(args: DistributedArgs) -> None:
  """Checks the combination of flags without touching JAX.

  Without `auto`, a manual setup needs all of the coordinator address, the process count
  and the process id (nothing could fill in a missing one). With `auto`, any subset may
  override the detection, but a process id still needs the count it is checked against.

  Args:
    args: the launcher's settings.

  Raises:
    DistributedSetupError: naming the offending flag.
  """
  if not args.enabled:
    return
  if args.num_processes is not None and args.num_processes < 1:
    raise DistributedSetupError("num_processes", f"must be >= 1, got {args.num_processes}")
  if args.process_id is not None:
    if args.num_processes is None:
      raise DistributedSetupError("process_id", "needs --num_processes")
    if not 0 <= args.process_id < args.num_processes:
      raise DistributedSetupError(
          "process_id", f"must be in [0, {args.num_processes}) for --num_processes="
          f"{args.num_processes}, got {args.process_id}")
  if args.coordinator_address is not None:
    host, _, port = args.coordinator_address.rpartition(":")
    if not host or not port.isdigit():
      raise DistributedSetupError("coordinator_address", "must be HOST:PORT, got "
                                  f"{args.coordinator_address!r}")
  if args.local_device_ids is not None and not all(
      str(i).isdigit() for i in args.local_device_ids):
    raise DistributedSetupError("local_device_ids", "must be non-negative device indices, "
                                f"got {','.join(map(str, args.local_device_ids))}")
  if not args.auto:
    for flag in ("coordinator_address", "num_processes", "process_id"):
      if getattr(args, flag) is None:
        raise DistributedSetupError(
            flag, "a manual multi-process setup needs --coordinator_address, "
            "--num_processes and --process_id (or --distributed to detect them on a "
            "TPU pod, SLURM or Open MPI)")


def initialize(args: DistributedArgs) -> bool:
  """Validates `args` and, for a multi-process run, starts JAX's distributed runtime.

  Must be called before any JAX computation (JAX refuses afterwards).

  Args:
    args: the launcher's settings.

  Returns:
    Whether a multi-process runtime was started (False: a plain one-process run).

  Raises:
    DistributedSetupError: bad flags, or the cluster could not be detected / joined.
  """
  validate(args)
  if not args.enabled:
    return False
  try:
    jax.distributed.initialize(
        coordinator_address=args.coordinator_address, num_processes=args.num_processes,
        process_id=args.process_id,
        local_device_ids=(None if args.local_device_ids is None
                          else [int(i) for i in args.local_device_ids]))
  except (ValueError, RuntimeError) as e:
    # A missing detection or an unreachable coordinator: say which flags would fix it.
    flag = "distributed" if args.auto else "coordinator_address"
    raise DistributedSetupError(
        flag, f"could not start the multi-process runtime ({' '.join(str(e).split())[:300]}); "
        "outside a TPU pod, SLURM or Open MPI job pass --coordinator_address, "
        "--num_processes and --process_id") from e
  return True


def is_primary() -> bool:
  """Whether this process writes files and prints (process 0; True in one-process runs)."""
  return jax.process_index() == 0


def signal_on_any_process(signum: int | None) -> int | None:
  """The signal any process received during the last chunk, agreed by all processes.

  A stop must be collective: a process that checkpoints and leaves while the others run
  the next chunk would hang them in its collectives. SLURM and TPU pods usually signal
  every process, but not necessarily within the same chunk.

  Args:
    signum: the signal this process received, or None.

  Returns:
    The lowest-ranked process's signal, or None if no process received one (`signum`
    itself in a one-process run).
  """
  if jax.process_count() == 1:
    return signum
  received = multihost_utils.process_allgather(np.int32(signum or 0))
  return next((int(s) for s in np.ravel(received) if s), None)
