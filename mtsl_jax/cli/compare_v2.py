"""The comparison v2: MTSL vs FedAvg, FedEM, SplitFed, FedRep and local-only, as the paper
frames it (server-heavy CNN cuts, server and client rates tuned on 2-D grids, budgets to a
plateau rule, paired tests over seeds).

  python launch/compare_v2.py --profile=cpu --tfds_data_dir=DIR   # what a 2-core CPU runs
  python launch/compare_v2.py --profile=full --tfds_data_dir=DIR  # the whole grid (GPU)
  python launch/compare_v2.py --phases=report                     # only the report

Phases: tune (each method's learning-rate grid on a validation split, extended at its
edges), main (every setting at the tuned point, the profile's seeds vmapped), report
(results/v2/REPORT.md and its figures, from results/v2/runs.jsonl alone). Every finished
run is one line of the records, so an interrupted run (or a later session, or another
machine writing the same file) resumes where it stopped. The grid and the profiles are
mtsl_jax/comparison/v2_grid.py.

Installed as `mtsl-compare-v2` (`mtsl_jax.cli.commands`); `python launch/compare_v2.py`
runs it from a clone.
"""

import pathlib
import sys

from absl import flags

from mtsl_jax import exit_codes
from mtsl_jax.comparison import v2_grid, v2_report, v2_runner

_PHASES = ("tune", "main", "report")
_PROFILE = flags.DEFINE_string("profile", "cpu", f"Which part of the grid: one of "
                               f"{list(v2_grid.PROFILES)}.")
_PHASE_LIST = flags.DEFINE_list("phases", list(_PHASES), "Phases to run, in order.")
_DATASETS = flags.DEFINE_list("datasets", [], "Datasets (default: the profile's).")
_METHODS = flags.DEFINE_list("methods", [], "Methods (default: the profile's).")
_RESULTS = flags.DEFINE_string("results", "results/v2/runs.jsonl", "Run records (JSONL).")
_REPORT = flags.DEFINE_string("report", "results/v2/REPORT.md", "The report to write.")
_SCRATCH = flags.DEFINE_string("scratch", "workdirs/compare_v2", "Per-run workdirs.")
_TFDS = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = TFDS's default: "
                            "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "Tuning points per vmapped program (0: the "
                              "profile's; the cpu profile's 5 keeps memory small).")


def _check() -> str | None:
  """The first bad flag as one line, or None."""
  unknown = set(_PHASE_LIST.value) - set(_PHASES)
  if unknown:
    return f"--phases: unknown {sorted(unknown)}; allowed: {', '.join(_PHASES)}"
  if _PROFILE.value not in v2_grid.PROFILES:
    return f"--profile: must be one of {list(v2_grid.PROFILES)}, got {_PROFILE.value!r}"
  profile = v2_grid.PROFILES[_PROFILE.value]
  for name, given, allowed in (("--datasets", _DATASETS.value, list(profile.datasets)),
                               ("--methods", _METHODS.value, list(profile.methods))):
    bad = [v for v in given if v not in allowed]
    if bad:
      return f"{name}: {bad} not in profile {_PROFILE.value!r}; allowed: {allowed}"
  if _CHUNK.value < 0:
    return f"--chunk_size: must be >= 0, got {_CHUNK.value}"
  return None


def _compare() -> None:
  paths = v2_runner.Paths(results=pathlib.Path(_RESULTS.value),
                          scratch=pathlib.Path(_SCRATCH.value), tfds_data_dir=_TFDS.value)
  phases = [p for p in _PHASES if p in _PHASE_LIST.value]
  run_phases = [p for p in phases if p != "report"]
  if run_phases:
    v2_runner.run_profile(paths, _PROFILE.value, run_phases,
                          datasets=_DATASETS.value or None, methods=_METHODS.value or None,
                          chunk_size=_CHUNK.value)
  if "report" in phases:
    v2_report.write_report(paths.results, pathlib.Path(_REPORT.value))
    print(f"compare_v2: wrote {_REPORT.value}", flush=True)


def main() -> int:
  """Runs the chosen phases of the comparison v2; the exit status."""
  problem = _check()
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  return exit_codes.run_reporting_errors(_compare)
