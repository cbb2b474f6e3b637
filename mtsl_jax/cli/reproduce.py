"""Reproduce the paper's comparison (MTSL vs FedAvg, FedEM, SplitFed, FedRep, local, central).

  python launch/reproduce.py --tfds_data_dir=DIR      # the CPU suite (or TFDS_DATA_DIR=DIR)
  python launch/reproduce.py --phases=report          # only the report

Phases: tune (learning rate per dataset and method on a validation split), main (every
heterogeneity setting, 3 seeds vmapped), noise (feature and label noise), report
(results/REPORT.md and its figures from results/runs.jsonl). Every finished run is one line
of results/runs.jsonl, so an interrupted reproduction resumes where it stopped and a rerun
with nothing left to do just rewrites the report. The grid (datasets, settings, methods,
budget, learning-rate grid, noise levels) is mtsl_jax/comparison/grid.py.

Default datasets are the CPU suite (MNIST, Fashion-MNIST and their mixture); on a GPU add
`--datasets=cifar10,cifar100` with a TFDS data_dir that holds them.

Installed as `mtsl-reproduce` (`mtsl_jax.cli.commands`); `python launch/reproduce.py` runs it from
a clone.
"""

import pathlib
import sys

from absl import flags

from mtsl_jax import exit_codes
from mtsl_jax.comparison import analysis, grid, records, report, runner

_CPU = [name for name, spec in grid.DATASETS.items() if spec.where == "cpu"]
_PHASES = flags.DEFINE_list("phases", ["tune", "main", "noise", "report"],
                            "Which phases to run, in order.")
_DATASETS = flags.DEFINE_list("datasets", _CPU, f"Datasets: any of {list(grid.DATASETS)}.")
_METHODS = flags.DEFINE_list("methods", list(grid.METHODS), "Methods to compare.")
_NOISE_DATASET = flags.DEFINE_string("noise_dataset", "mnist",
                                     "Dataset of the noise phase ('' to skip it).")
_RESULTS = flags.DEFINE_string("results", "results/runs.jsonl", "Run records (JSONL).")
_REPORT = flags.DEFINE_string("report", "results/REPORT.md", "The report to write.")
_SCRATCH = flags.DEFINE_string("scratch", "workdirs/reproduce", "Per-run workdirs.")
_TFDS = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = TFDS's default: "
                            "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")
_NPZ = flags.DEFINE_string("npz_dir", "", "Directory of the npz datasets (only cifar10_subset "
                           "reads one; '' = its file name relative to the current directory).")
_BUDGET = flags.DEFINE_integer("budget_steps", None,
                               "Override every dataset's budget of client steps (tests).")


def _reproduce() -> None:
  phases = set(_PHASES.value)
  noise_dataset = _NOISE_DATASET.value or None
  runs = runner.preflight(_DATASETS.value, _METHODS.value, noise_dataset, _BUDGET.value)
  paths = runner.Paths(results=pathlib.Path(_RESULTS.value), scratch=pathlib.Path(_SCRATCH.value),
                       tfds_data_dir=_TFDS.value, npz_dir=_NPZ.value)
  if phases - {"report"}:
    print(f"reproduce: up to {runs} runs; records in {paths.results}", flush=True)
  lrs = analysis.tuned_learning_rates(records.ResultsFile(paths.results).load())
  if "tune" in phases:
    lrs = runner.run_tuning(paths, _DATASETS.value + ([noise_dataset] if noise_dataset and
                                                      noise_dataset not in _DATASETS.value
                                                      else []),
                            _METHODS.value, _BUDGET.value)
  if "main" in phases:
    runner.run_main(paths, _DATASETS.value, _METHODS.value, lrs, budget_steps=_BUDGET.value)
  if "noise" in phases and noise_dataset:
    runner.run_noise(paths, noise_dataset, _METHODS.value, lrs, budget_steps=_BUDGET.value)
  if "report" in phases:
    report.write_report(paths.results, pathlib.Path(_REPORT.value))
    print(f"reproduce: wrote {_REPORT.value}", flush=True)


def main() -> int:
  """Runs the chosen phases of the comparison; the exit status."""
  unknown = set(_PHASES.value) - {"tune", "main", "noise", "report"}
  if unknown:
    print(f"error: --phases: unknown {sorted(unknown)}; allowed: tune, main, noise, report",
          file=sys.stderr)
    return 2
  return exit_codes.run_reporting_errors(_reproduce)

