"""Console entry points: `mtsl-train` and the others run the commands of `mtsl_jax.cli`.

  mtsl-train            mtsl_jax/cli/train.py                python launch/train.py
  mtsl-sweep            mtsl_jax/cli/sweep.py                python launch/sweep.py
  mtsl-lr-sweep         mtsl_jax/cli/lr_sweep.py             python launch/lr_sweep.py
  mtsl-plot             mtsl_jax/cli/plot.py                 python launch/plot.py
  mtsl-reproduce        mtsl_jax/cli/reproduce.py            python launch/reproduce.py
  mtsl-compare-v2       mtsl_jax/cli/compare_v2.py           python launch/compare_v2.py
  mtsl-server-map       mtsl_jax/cli/server_map.py           python launch/server_map.py
  mtsl-privacy          mtsl_jax/cli/privacy.py              python launch/privacy.py
  mtsl-smoothness       mtsl_jax/cli/estimate_smoothness.py  python launch/estimate_smoothness.py

Each entry point installs `signals.install_early_exit` first and only then imports its
command module: a SIGINT or SIGTERM while JAX and TFDS load or flags parse then exits with
128 + N and one line, as after start-up. Standard library and `signals` only here, so
that nothing heavy loads before the handler is in place.
"""

import importlib
import sys

from mtsl_jax import signals


def _run(command: str) -> None:
  """Runs `mtsl_jax.cli.<command>`'s `main()` (flags parsed); exits with its status.

  What every command does alike happens here: the start-up signal handler, the flags
  parsed with every mistake in one line (`config_files.parse_flags`), stray arguments
  refused, library logs quieted unless --verbosity is given.

  Args:
    command: the module's name in `mtsl_jax.cli`, e.g. 'train'.
  """
  signals.install_early_exit()
  # Only now the heavy imports: a signal while they load meets the handler above.
  # pylint: disable=import-outside-toplevel
  from absl import app
  from absl import flags
  from mtsl_jax import config_files, exit_codes
  module = importlib.import_module(f"mtsl_jax.cli.{command}")
  # absl's --help prints the __main__ module's docstring: a console script has none and a
  # launch/*.py wrapper only points here, so show the command's own.
  sys.modules["__main__"].__doc__ = module.__doc__

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
      exit_codes.quiet_library_logs()  # warnings and up; orbax logs every file at INFO
    # Failed runs end with os._exit (exit_codes.exit_process): nothing may hang on exit.
    exit_codes.exit_process(module.main())

  app.run(main, flags_parser=config_files.parse_flags)


def train() -> None:
  """`mtsl-train`: train and evaluate one experiment."""
  _run("train")


def sweep() -> None:
  """`mtsl-sweep`: a resumable sweep over config fields."""
  _run("sweep")


def lr_sweep() -> None:
  """`mtsl-lr-sweep`: a (server, client) learning-rate grid as one vmapped program."""
  _run("lr_sweep")


def plot() -> None:
  """`mtsl-plot`: comparison figures from run directories."""
  _run("plot")


def reproduce() -> None:
  """`mtsl-reproduce`: the paper's comparison, resumable, and its report."""
  _run("reproduce")


def compare_v2() -> None:
  """`mtsl-compare-v2`: the comparison v2 (2-D tuning, CNN cuts, paired tests)."""
  _run("compare_v2")


def server_map() -> None:
  """`mtsl-server-map`: when the shared server part helps (map, ablations, document)."""
  _run("server_map")


def privacy() -> None:
  """`mtsl-privacy`: defences against attacks on the messages (docs/privacy.md)."""
  _run("privacy")


def smoothness() -> None:
  """`mtsl-smoothness`: block smoothness constants and step-size bounds of a config."""
  _run("estimate_smoothness")
