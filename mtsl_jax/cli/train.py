"""Train and evaluate one experiment: `python launch/train.py --config configs/default.py`.

Any field can be overridden, e.g. `--config.server_optimizer.learning_rate=0.05`
(the config is locked: a misspelled field is an error). Config and data mistakes (a
missing or broken config file, an unknown field, a value of the wrong type or out of
range) print one line naming the file or field and exit with status 2 before anything is
loaded (so do unreadable or mismatched checkpoints); divergence exits with status 3;
SIGINT/SIGTERM finish the current chunk of steps, checkpoint and exit with status 130/143
(rerun with the same --workdir to resume).

Multi-process (multi-host) runs start every process with the same command plus
`--distributed` (TPU pods, SLURM, Open MPI: the cluster is detected) or
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; see docs/scaling.md.
Bad combinations of these flags print one line naming the flag and exit with status 2.

Installed as `mtsl-train` (`mtsl_jax.cli.commands`); `python launch/train.py` runs it from
a clone.
"""

import sys

from absl import flags

from mtsl_jax import config_files, distributed, exit_codes, train, validation

_CONFIG = config_files.DEFINE_config_file("config", "Experiment config file (configs/<name>.py).")
_WORKDIR = flags.DEFINE_string(
    "workdir", "workdirs/default", "Directory for checkpoints and metrics; reruns resume.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-process run: call jax.distributed.initialize(), detecting "
    "the cluster (TPU pod, SLURM, Open MPI); the flags below override what is detected.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0's coordinator (manual multi-process "
    "setup; needs --num_processes and --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
_LOCAL_DEVICES = flags.DEFINE_list(
    "local_device_ids", None, "Local devices this process uses, e.g. 0 (one GPU per process).")


def main() -> int:
  """Validates the config, sets up the processes, trains, evaluates; the exit status."""
  if config_files.required_config(_CONFIG) is None:
    return 2
  # Before the distributed setup, which may wait for the other processes: a bad config
  # fails at once (train_and_evaluate validates again, for callers in Python).
  status = exit_codes.run_reporting_errors(lambda: validation.validate_config(_CONFIG.value))
  if status:
    return status
  try:
    # Before anything touches a JAX backend: jax.distributed refuses to start afterwards.
    distributed.initialize(distributed.DistributedArgs(
        auto=_DISTRIBUTED.value, coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
        local_device_ids=_LOCAL_DEVICES.value))
  except distributed.DistributedSetupError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return exit_codes.run_reporting_errors(
      lambda: train.train_and_evaluate(_CONFIG.value, _WORKDIR.value))

