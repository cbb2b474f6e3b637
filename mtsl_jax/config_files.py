"""Experiment configs from files and command-line overrides, every mistake in one line.

Every launcher in launch/ reads its config through this module, so a missing or broken
file, a misspelled override or a value of the wrong type reads the same everywhere: a
`ConfigFileError` naming the file (and line), or a `validation.ConfigError` naming the
field, printed as `error: <message>` with exit status 2 and no traceback, before any data
is loaded or anything compiles.

  load_config_file(spec)       'path.py' or 'path.py:arg' -> the locked ConfigDict its
                               get_config() returns, fields and types checked
  find_config_file(path)       where a path names a file: as given (relative to the
                               working directory), else 'configs/...' in the project's
                               own configs (a clone's, or those installed with the package)
  load_sweep_file(path)        (get_config(), get_sweep()) of a sweep file
  apply_overrides(config, d)   {dotted field: value} through
                               ConfigDict.update_from_flattened_dict
  load_run_config(workdir)     the config a run recorded in <workdir>/config.json
  DEFINE_config_file(name)     ml_collections' config flag (which parses the
                               --config.field=value overrides), loading with this module
  parse_flags(argv)            absl's flag parsing for `app.run(main, flags_parser=...)`:
                               any flag or config mistake printed in one line, exit 2

Values are checked against `config_base.base_config()` (`validation.check_schema`) as soon
as a file is loaded, so a wrong type in a file is reported with the file's name; ranges
and the rules that tie fields together wait for `validation.validate_config`, after the
overrides, which may be what makes a config valid.
"""

import copy
import importlib.machinery
import json
import importlib.util
import math
import pathlib
import re
import sys
import traceback
from typing import Any, Mapping, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from mtsl_jax import config_base, errors, fingerprint, validation


# Defined in `errors.py`; public here too. A ConfigFileError is a ConfigError.
ConfigFileError = errors.ConfigFileError
CommandLineError = errors.CommandLineError


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _raised(error: BaseException, path: str, doing: str) -> ConfigFileError:
  """A ConfigFileError for `error` raised while `doing`, with the file's deepest line."""
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
  where = f"line {lines[-1]}: " if lines else ""
  message = _one_line(error) or "(no message)"
  if isinstance(error, TypeError) and "numpy" in message:  # ConfigDict refusing np.int64, ...
    message += "; use Python int, float and bool values, not numpy scalars"
  return ConfigFileError(path, f"{where}{doing} raised {type(error).__name__}: {message}")


_PACKAGE = pathlib.Path(__file__).resolve().parent


def bundled_configs_dir() -> pathlib.Path | None:
  """The project's `configs/` directory, wherever the package runs from.

  Returns:
    `mtsl_jax/configs` in an installed package (the wheel ships configs/ there), else
    `configs/` beside the package in a clone (or an editable install of one); None when
    neither exists.
  """
  installed = _PACKAGE / "configs"
  if installed.is_dir():
    return installed
  clone = _PACKAGE.parent
  # pyproject.toml marks a source tree: a site-packages/configs is some other project's.
  if (clone / "configs").is_dir() and (clone / "pyproject.toml").is_file():
    return clone / "configs"
  return None


def find_config_file(path: str) -> str:
  """Where a config or sweep file named on the command line is.

  `--config configs/default.py` then works from any directory and from an installed
  package: a path that exists as given (relative to the working directory) wins, and a
  relative 'configs/...' that does not is looked up in `bundled_configs_dir()`.

  Args:
    path: the path as given.

  Returns:
    The path to read: `path` itself, or the bundled file; `path` unchanged when neither
    exists (the loader then reports it missing).
  """
  given = pathlib.Path(path)
  if given.exists() or given.is_absolute() or given.parts[:1] != ("configs",):
    return path
  configs = bundled_configs_dir()
  if configs is not None and configs.joinpath(*given.parts[1:]).exists():
    return str(configs.joinpath(*given.parts[1:]))
  return path


def _load_module(path: str):
  """Executes the Python file at `path` as a fresh module; ConfigFileError on failure."""
  file = pathlib.Path(path)
  if not file.exists():
    configs = bundled_configs_dir()
    where = (f" (nor in the project's configs, {configs})"
             if configs is not None and file.parts[:1] == ("configs",) else "")
    raise ConfigFileError(path, f"no such file{where}")
  if not file.is_file():
    raise ConfigFileError(path, "not a file (a config file is a .py file defining get_config())")
  # A SourceFileLoader reads any file name as Python source, as config_flags does.
  loader = importlib.machinery.SourceFileLoader(f"_mtsl_config_{file.stem}", path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  sys.modules[loader.name] = module  # as an import would: dataclasses, pickle look it up
  try:
    loader.exec_module(module)
  except SyntaxError as e:
    del sys.modules[loader.name]
    raise ConfigFileError(path, f"line {e.lineno}: not valid Python: {e.msg}") from None
  except Exception as e:  # pylint: disable=broad-except  # anything the file itself does
    del sys.modules[loader.name]
    raise _raised(e, path, "loading it") from None
  return module


_WHAT_FILES_DEFINE = {
    "get_config": "a config file's returns config_base.base_config() with its changes; see "
                  "configs/default.py",
    "get_sweep": "a sweep file's returns {field: [values, ...]}; see "
                 "configs/sweeps/lr_synthetic.py",
}


def _call(module, path: str, name: str, *args):
  """`module.name(*args)`, or a ConfigFileError if it is missing or raises."""
  fn = getattr(module, name, None)
  if not callable(fn):
    raise ConfigFileError(path, f"defines no {name}() function ({_WHAT_FILES_DEFINE[name]})")
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except  # anything the file itself does
    raise _raised(e, path, f"{name}()") from None


def _config_from(module, path: str, args: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`module.get_config(*args)`, checked to be a ConfigDict of the schema, then locked."""
  config = _call(module, path, "get_config", *args)
  if not isinstance(config, ml_collections.ConfigDict):
    got = ("None (a missing return statement?)" if config is None
           else f"a {type(config).__module__}.{type(config).__name__}")
    raise ConfigFileError(path, "get_config() must return an ml_collections.ConfigDict built "
                          f"from config_base.base_config(), got {got}")
  try:
    validation.check_schema(config)
  except validation.ConfigError as e:
    raise ConfigFileError(path, str(e), e.field) from None
  config.lock()  # a misspelled override is then an error, not a new field
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The config a config file's `get_config()` returns, locked and schema-checked.

  Args:
    spec: the file's path (see `find_config_file`); as with config_flags, 'path.py:arg'
      calls get_config('arg').

  Returns:
    The locked ConfigDict (every field of `config_base.base_config()`, of its type).

  Raises:
    ConfigFileError: the file is missing or not Python, raises while loading, has no
      get_config(), whose call raises or returns something other than a ConfigDict with
      the schema's fields and types.
  """
  path, *args = spec.split(":", 1)
  path = find_config_file(path)
  return _config_from(_load_module(path), path, args)


def _section_and_leaf(config: ml_collections.ConfigDict, field: str):
  """The section holding `field` and its last name; ConfigError for an unknown path."""
  *parents, leaf = field.split(".")
  section = config
  for depth, part in enumerate(parents):
    if part not in section:
      raise validation.ConfigError(".".join(parents[:depth + 1]),
                                   validation.unknown_field_message(part, section.keys()))
    section = section[part]
    if not isinstance(section, ml_collections.ConfigDict):
      raise validation.ConfigError(".".join(parents[:depth + 1]),
                                   f"is a value, not a section; no field {field!r} under it")
  if leaf not in section:
    raise validation.ConfigError(field, validation.unknown_field_message(leaf, section.keys()))
  return section, leaf


def check_field(config: ml_collections.ConfigDict, field: str) -> None:
  """Raises a ConfigError naming the closest known field if `field` does not exist.

  Args:
    config: the config.
    field: a dotted path, e.g. 'data.num_clients'.
  """
  _section_and_leaf(config, field)


def _check_override_value(config, field: str, value: Any) -> None:
  """What ConfigDict would let through silently: a bool as a number, numpy scalars."""
  section, leaf = _section_and_leaf(config, field)
  current = section[leaf]
  if isinstance(value, (bool, np.bool_)) and not isinstance(current, bool):
    # ConfigDict stores True in an int field, and as 1.0 in a float field.
    raise validation.ConfigError(
        field, f"must be {validation.expected_kind(field)}, got {value!r}")
  problem = validation.numpy_scalar_problem(
      value, {bool: "bool", int: "int"}.get(type(current), "float"))
  if problem:
    raise validation.ConfigError(field, problem)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-path overrides set, checked as a config file is.

  Args:
    config: the base config.
    overrides: dotted field -> value, e.g. {'data.num_clients': 4}; lists become tuples.

  Returns:
    The overridden copy (fields and types checked; values wait for validate_config).

  Raises:
    validation.ConfigError: an unknown field (with the closest known one) or a value of
      the wrong type.
  """
  config = copy.deepcopy(config)
  for field, value in overrides.items():
    _check_override_value(config, field, value)
    value = tuple(value) if isinstance(value, list) else value
    try:
      config.update_from_flattened_dict({field: value})
    except TypeError:  # ConfigDict's own type check: a str for an int, ...
      raise validation.ConfigError(field, f"must be {validation.expected_kind(field)}, got "
                                   f"{value!r}") from None
  validation.check_schema(config)
  return config


def load_config(spec: str, overrides: Mapping[str, Any] | None = None,
                validate: bool = True) -> ml_collections.ConfigDict:
  """A config file's config with `overrides` applied, validated.

  The in-process counterpart of `--config spec --config.field=value ...`.

  Args:
    spec: see `load_config_file`.
    overrides: see `apply_overrides`.
    validate: run `validation.validate_config` on the result.

  Returns:
    The config.

  Raises:
    ConfigFileError, validation.ConfigError: naming the file or the field.
  """
  config = load_config_file(spec)
  if overrides:
    config = apply_overrides(config, overrides)
  if validate:
    validation.validate_config(config)
  return config


def load_sweep_file(path: str) -> tuple[ml_collections.ConfigDict, dict[str, list]]:
  """A sweep file's base config (`get_config()`) and sweep (`get_sweep()`).

  Args:
    path: the sweep file (see `find_config_file`).

  Returns:
    (config, sweep): the locked, schema-checked base config and {field: list of values}.

  Raises:
    ConfigFileError: as `load_config_file`, or get_sweep() missing, raising or returning
      anything but a dict of field -> non-empty list.
    validation.ConfigError: a swept field that does not exist (with the closest known
      one), or a value that is a bool for a number or a numpy scalar.
  """
  path = find_config_file(path)
  module = _load_module(path)
  config = _config_from(module, path)
  sweep = _call(module, path, "get_sweep")
  if not isinstance(sweep, dict):
    raise ConfigFileError(path, "get_sweep() must return a dict of field -> list of values, "
                          f"got {type(sweep).__name__}")
  for field, values in sweep.items():
    if not isinstance(field, str):
      raise ConfigFileError(path, f"get_sweep()'s keys must be dotted field names, got {field!r}")
    if not isinstance(values, (list, tuple)) or not values:
      raise ConfigFileError(path, f"get_sweep()[{field!r}] must be a non-empty list of values, "
                            f"got {values!r}", field)
    for value in values:
      _check_override_value(config, field, value)
  return config, sweep


# ---- the command line ---------------------------------------------------------------------


class _FileParser(flags.ArgumentParser):
  """The config flag's parser: this module's loader, keeping what it loaded."""

  def __init__(self):
    self.config = None

  def parse(self, argument):
    self.config = load_config_file(argument)
    return self.config

  def flag_type(self):
    return "config object"


def DEFINE_config_file(  # pylint: disable=invalid-name  # absl's naming of flag definers
    name: str, help_string: str, flag_values: flags.FlagValues = flags.FLAGS,
    sys_argv: list[str] | None = None) -> flags.FlagHolder:
  """`config_flags.DEFINE_config_file`, locked, loading with `load_config_file`.

  config_flags keeps doing what it does (the `--name.field=value` overrides, typed by the
  field); only the loading of the file is this module's, so a bad file is one line naming
  it. (config_flags' own loader prints a traceback, or for a missing file defers the error
  until the config is first read.) `parser` is the absl Flag's public attribute.

  Args:
    name: the flag's name, e.g. 'config'.
    help_string: its help.
    flag_values: where to define it (tests pass their own).
    sys_argv: the command line config_flags reads overrides from (default sys.argv).

  Returns:
    The flag's holder; `.value` is the config after parsing (None if not given).
  """
  holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values,
                                           lock_config=True, sys_argv=sys_argv)
  flag_values[name].parser = _FileParser()
  return holder


def required_config(holder: flags.FlagHolder) -> ml_collections.ConfigDict | None:
  """The parsed config of a `--config` flag, or None after saying in one line it is needed.

  Args:
    holder: what `DEFINE_config_file` returned.

  Returns:
    The config, or None when the flag was not given (the command then exits with 2).
  """
  if holder.value is None:
    print(f"error: --{holder.name} is required, e.g. --{holder.name} configs/default.py",
          file=sys.stderr)
  return holder.value


def _config_flags(flag_values: flags.FlagValues) -> dict[str, _FileParser]:
  return {name: flag_values[name].parser for name in flag_values
          if isinstance(flag_values[name].parser, _FileParser)}


_OVERRIDE_VALUE = re.compile(r"flag --(?P<name>[^=\s]+)=", re.S)


def _value_error(error: flags.Error, parsers: dict[str, _FileParser]) -> Exception:
  """The ConfigError behind an absl flag error, or a one-line CommandLineError."""
  cause = error.__context__
  if isinstance(cause, validation.ConfigError):  # the file parser's, wrapped by absl
    return cause
  text = str(error)
  match = _OVERRIDE_VALUE.match(text)
  if match:
    flag_name, _, field = match["name"].partition(".")
    if flag_name in parsers and field:
      # absl writes f"flag --{name}={argument}: {cause}"; the argument is what is left.
      raw = text[match.end():]
      if cause is not None and raw.endswith(f": {cause}"):
        raw = raw[:-len(f": {cause}")]
      return validation.ConfigError(
          field, f"must be {validation.expected_kind(field)}, got {raw!r} on the command line")
  return CommandLineError(_one_line(text))


def _path_error(argv: list[str], parsers: dict[str, _FileParser],
                flag_values: flags.FlagValues) -> validation.ConfigError | None:
  """The override in `argv` whose field does not exist, as config_flags matches them."""
  argv = flag_values.read_flags_from_files(argv, force_gnu=False)
  for name, parser in parsers.items():
    if parser.config is None:
      continue
    for arg in argv:
      match = re.match(rf"-{{1,2}}(?:no)?{re.escape(name)}\.([^=]+)", arg)
      if match:
        try:
          check_field(parser.config, match[1])
        except validation.ConfigError as e:
          return e
  return None


def parse_command_line(argv: list[str],
                       flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses `argv` into `flag_values`; every mistake becomes one exception, one line.

  Args:
    argv: the command line, program name first.
    flag_values: the flags (tests pass their own).

  Returns:
    The arguments that are not flags, program name first (as absl's parser returns).

  Raises:
    validation.ConfigError (ConfigFileError for the file): the config file, an override's
      field or its value.
    CommandLineError: any other flag.
  """
  parsers = _config_flags(flag_values)
  try:
    return flag_values(argv)
  except validation.ConfigError:
    raise
  except flags.Error as e:
    raise _value_error(e, parsers) from None
  except (AttributeError, KeyError, IndexError, ValueError) as e:
    # config_flags resolving an override's path: a field that does not exist.
    raise (_path_error(argv, parsers, flag_values)
           or CommandLineError(_one_line(f"{type(e).__name__}: {e}"))) from None


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flags_parser: `error: <message>` and exit status 2 on any mistake.

  Args:
    argv: the command line, program name first.

  Returns:
    The arguments that are not flags.
  """
  try:
    return parse_command_line(argv)
  except (validation.ConfigError, CommandLineError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def finite_positive_floats(values: Sequence[str], flag: str) -> list[float]:
  """A list flag's values as positive finite floats.

  Args:
    values: the flag's strings, e.g. ['0.01', '0.1'].
    flag: its name, for the message.

  Returns:
    The floats.

  Raises:
    CommandLineError: an empty list, or a value that is not a number > 0.
  """
  out = []
  for value in values or ():
    try:
      number = float(value)
    except ValueError:
      number = math.nan
    if not (math.isfinite(number) and number > 0):
      raise CommandLineError(f"--{flag}: every value must be a number > 0, got {value!r}")
    out.append(number)
  if not out:
    raise CommandLineError(f"--{flag}: give at least one value, e.g. --{flag}=0.01,0.1")
  return out


def _as_default_type(value: Any, default: Any) -> Any:
  """A JSON value back in its field's Python type (JSON turned tuples into lists)."""
  if isinstance(default, tuple) and isinstance(value, list):
    return tuple(_as_default_type(v, default[0] if default else v) if isinstance(v, list)
                 else v for v in value)
  if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


def load_run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config of the run in `workdir`, from the config.json it recorded.

  Args:
    workdir: a run's workdir (`train.write_config` wrote its config.json).

  Returns:
    The validated config.

  Raises:
    ConfigFileError: no config.json, unreadable JSON, or a field this version of the
      schema does not know; validation.ConfigError as `validate_config`.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.is_file():
    raise ConfigFileError(str(path), f"no such file; is {workdir} the workdir of a run?")
  try:
    saved = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ConfigFileError(str(path), f"cannot be read as JSON ({_one_line(str(e))})") from e
  config = config_base.base_config()
  flat = fingerprint.dotted(saved)
  for field, value in flat.items():
    try:
      check_field(config, field)
    except validation.ConfigError as e:
      raise ConfigFileError(str(path), str(e), field) from None
    section, leaf = _section_and_leaf(config, field)
    flat[field] = _as_default_type(value, section[leaf])
  config = apply_overrides(config, flat)
  validation.validate_config(config)
  return config
