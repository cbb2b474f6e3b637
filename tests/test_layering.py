"""The package's layers: no module imports a module of a higher layer.

The order, lowest first (also in README.md, "Layout"); a module may import modules of its
own layer and of lower ones:

  0. errors        errors.py (and the package's own __init__): imports nothing of mtsl_jax.
  1. foundations   config_base, methods, optimizers, step_sizes, signals, fingerprint,
                   workdir, metric_writers, checkpointing, distributed, sharding,
                   exit_codes, distance_correlation: each about one thing, knowing
                   nothing of MTSL.
  2. data          data/: sources, partitions, Synthetic, the federation on the device.
  3. models        models, cut_costs, task_losses, split_state, split_model, client_groups.
  4. config checks memory, validation, config_files: a config checked against the
                   schema, the models and the machine, before anything is built.
  5. MTSL          cut_defences, split_gradients, split, ledger, evaluation.
  6. methods       algorithms/: MTSL and the baselines behind one interface.
  7. runs          loop, replicas, train, seed_batch: the one training loop.
  8. studies       smoothness, lr_grid, lr_study: tools on the MTSL problem (the grid
                   trains through the loop).
  9. experiments   sweeps, plotting, comparison/, server_map/, privacy/.
 10. commands      cli/: the command-line programs (launch/*.py, the console scripts).

Imports are read with `ast` from the source (any depth: inside functions too), so the
check needs nothing imported. Importing `mtsl_jax.a.b` also runs the package `mtsl_jax.a`,
so each package on the way counts as imported.
"""

import ast
import pathlib

import pytest

from mtsl_jax import algorithms, checkpointing, config_files, data, distributed, errors
from mtsl_jax import loop, methods, metric_writers, validation, workdir

ROOT = pathlib.Path(__file__).resolve().parents[1] / "mtsl_jax"

# (layer name, modules): a name ending in '/' is a package with every module in it.
LAYERS = (
    ("errors", ("", "errors")),
    ("foundations", ("config_base", "methods", "optimizers", "step_sizes", "signals",
                     "fingerprint", "workdir", "metric_writers", "checkpointing",
                     "distributed", "sharding", "exit_codes", "distance_correlation")),
    ("data", ("data/",)),
    ("models", ("models", "cut_costs", "task_losses", "split_state", "split_model",
                "client_groups")),
    ("config checks", ("memory", "validation", "config_files")),
    ("MTSL", ("cut_defences", "split_gradients", "split", "ledger", "evaluation")),
    ("methods", ("algorithms/",)),
    ("runs", ("loop", "replicas", "train", "seed_batch")),
    ("studies", ("smoothness", "lr_grid", "lr_study")),
    ("experiments", ("sweeps", "plotting", "comparison/", "server_map/", "privacy/")),
    ("commands", ("cli/",)),
)


def _module_names() -> dict[str, pathlib.Path]:
  """Every module of the package by dotted name ('mtsl_jax.data' for its __init__)."""
  names = {}
  for path in sorted(ROOT.rglob("*.py")):
    parts = ("mtsl_jax",) + path.relative_to(ROOT).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


MODULES = _module_names()


def _layer_of(module: str) -> int:
  """The layer index of a dotted module name (KeyError if no layer names it)."""
  rel = module.removeprefix("mtsl_jax").removeprefix(".")
  for index, (_, members) in enumerate(LAYERS):
    for member in members:
      if member.endswith("/"):
        package = member[:-1]
        if rel == package or rel.startswith(package + "."):
          return index
      elif rel == member:
        return index
  raise KeyError(module)


def _imported(module: str, path: pathlib.Path) -> set[str]:
  """The mtsl_jax modules `module` imports, with every package on the way to each."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  targets = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package, up level - 1 packages
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      for alias in node.names:  # `from p import name`: a submodule, or a name in p
        targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
  closed = set()
  for target in targets:
    if target == "mtsl_jax" or target.startswith("mtsl_jax."):
      parts = target.split(".")
      closed.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
  return {t for t in closed if t in MODULES and t != module}


def test_every_module_has_a_layer():
  missing = []
  for module in MODULES:
    try:
      _layer_of(module)
    except KeyError:
      missing.append(module)
  assert not missing, f"modules in no layer of LAYERS (add them where they belong): {missing}"


def test_no_module_imports_a_higher_layer():
  upward = []
  for module, path in MODULES.items():
    own = _layer_of(module)
    for target in sorted(_imported(module, path)):
      if _layer_of(target) > own:
        upward.append(f"{path.relative_to(ROOT.parent)} (layer {own} {LAYERS[own][0]!r}) "
                      f"imports {target} (layer {_layer_of(target)} "
                      f"{LAYERS[_layer_of(target)][0]!r})")
  assert not upward, "upward imports:\n" + "\n".join(upward)


def test_errors_module_imports_nothing_from_the_package():
  assert not _imported("mtsl_jax.errors", MODULES["mtsl_jax.errors"])


def test_the_checker_sees_imports():
  """Guards the test itself: known imports of every form are found."""
  assert "mtsl_jax.validation" in _imported("mtsl_jax.config_files",
                                            MODULES["mtsl_jax.config_files"])
  fedavg = _imported("mtsl_jax.algorithms.fedavg", MODULES["mtsl_jax.algorithms.fedavg"])
  assert {"mtsl_jax.algorithms", "mtsl_jax.algorithms.federated",
          "mtsl_jax.algorithms.base"} <= fedavg
  assert "mtsl_jax.data.sources" in _imported("mtsl_jax.data.federation",
                                              MODULES["mtsl_jax.data.federation"])


@pytest.mark.parametrize("alias, error", [
    (validation.ConfigError, errors.ConfigError),
    (config_files.ConfigFileError, errors.ConfigFileError),
    (config_files.CommandLineError, errors.CommandLineError),
    (data.DataError, errors.DataError),
    (workdir.WorkdirError, errors.WorkdirError),
    (loop.NonFiniteError, errors.NonFiniteError),
    (checkpointing.CheckpointError, errors.CheckpointError),
    (checkpointing.CheckpointMismatchError, errors.CheckpointMismatchError),
    (checkpointing.CheckpointCorruptError, errors.CheckpointCorruptError),
    (checkpointing.CheckpointWriteError, errors.CheckpointWriteError),
    (metric_writers.MetricsFileError, errors.MetricsFileError),
    (distributed.DistributedSetupError, errors.DistributedSetupError),
])
def test_public_error_names_are_the_errors_module_classes(alias, error):
  assert alias is error


def test_method_names_below_the_algorithms_match_the_registry():
  assert methods.ALGORITHM_NAMES == tuple(algorithms.ALGORITHMS)
  assert set(methods.SPLIT_ALGORITHMS) <= set(methods.ALGORITHM_NAMES)
  assert set(methods.ROUND_ALGORITHMS) <= set(methods.ALGORITHM_NAMES)
