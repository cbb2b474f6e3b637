"""Every error the library raises on purpose, in one leaf module.

Each is a mistake or condition the user can act on, and its message says what to change
in one line (`exit_codes.run_reporting_errors` prints it and picks the exit status). They
live here, importing nothing from mtsl_jax, so any module can raise them and any entry
point can catch them without importing the module that raised them. The modules that
used to define them keep their names as aliases (`validation.ConfigError is
errors.ConfigError`, `data.DataError`, `workdir.WorkdirError`, `loop.NonFiniteError`,
`checkpointing.CheckpointError` and its subclasses, `metric_writers.MetricsFileError`,
`distributed.DistributedSetupError`, `config_files.ConfigFileError` and
`config_files.CommandLineError`).
"""


class ConfigError(ValueError):
  """A config value is invalid; the message names the field and what is allowed.

  Attributes:
    field: the dotted config field at fault, e.g. 'split.client_top_blocks'.
  """

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


class ConfigFileError(ConfigError):
  """A config or sweep file cannot be used; the message names the file.

  A `ConfigError`, so every caller that reports config mistakes (e.g.
  `exit_codes.run_reporting_errors`) reports these too; the message starts with the path
  instead of `config.`.

  Attributes:
    path: the file.
    field: the config field at fault, if one is (else None).
  """

  def __init__(self, path: str, message: str, field: str | None = None):
    ValueError.__init__(self, f"{path}: {message}")  # not ConfigError's `config.<field>: `
    self.path = path
    self.field = field


class CommandLineError(ValueError):
  """A command-line flag that is not a config field has a bad value or does not exist."""


class DataError(Exception):
  """A dataset cannot be loaded or federated as configured; the message says how to fix it."""


class WorkdirError(OSError):
  """A workdir cannot be used; the message names it and says what to do."""


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite value; the message names the step and what diverged."""


class CheckpointError(RuntimeError):
  """A checkpoint in the workdir cannot be used; the message says how to start fresh."""


class CheckpointMismatchError(CheckpointError):
  """The checkpoint in a workdir was written by a different experiment config."""


class CheckpointCorruptError(CheckpointError):
  """The latest checkpoint exists but cannot be read (truncated or damaged files)."""


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (full disk, permissions, a path that is a file)."""


class MetricsFileError(ValueError):
  """A run's metrics.jsonl is damaged in a way that cannot be repaired safely."""


class DistributedSetupError(ValueError):
  """Launcher flags for a multi-process run are inconsistent; the message names the flag.

  Attributes:
    flag: the launcher flag at fault, without the leading '--'.
  """

  def __init__(self, flag: str, message: str):
    super().__init__(f"--{flag}: {message}")
    self.flag = flag
