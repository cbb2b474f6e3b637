"""When does the shared server part help? The map over examples per client x clients x cut,
with ablations, and its document docs/when_mtsl_helps.md.

  python launch/server_map.py --profile=cpu --tfds_data_dir=DIR   # what a 2-core CPU runs
  python launch/server_map.py --profile=full --tfds_data_dir=DIR  # the whole map (GPU)
  python launch/server_map.py --phases=report                     # only the document

Phases: tune (each method's learning-rate grid at the profile's tuning regime, extended
at its edges), map (every cell at the tuned points, seeds vmapped), ablations (the MTSL
rows with the shared part ablated), report (docs/when_mtsl_helps.md and its figures, from
results/server_map/runs.jsonl.gz alone). Every finished run is one line of the records, so
an interrupted run resumes where it stopped. The axes and profiles are
mtsl_jax/server_map/grid.py.

Installed as `mtsl-server-map` (`mtsl_jax.cli.commands`); `python launch/server_map.py`
runs it from a clone.
"""

import pathlib
import sys

from absl import flags

from mtsl_jax import exit_codes
from mtsl_jax.server_map import grid, report, runner

_PHASES = (*runner.PHASES, "report")
_PROFILE = flags.DEFINE_string("profile", "cpu", f"Which part of the map: one of "
                               f"{list(grid.PROFILES)}.")
_PHASE_LIST = flags.DEFINE_list("phases", list(_PHASES), "Phases to run, in order.")
_DATASETS = flags.DEFINE_list("datasets", [], "Datasets (default: the profile's).")
_SETTINGS = flags.DEFINE_list("settings", [], "Heterogeneity settings (default: the "
                              "profile's).")
_METHODS = flags.DEFINE_list("methods", [], "Methods (default: the profile's).")
_RESULTS = flags.DEFINE_string("results", "results/server_map/runs.jsonl.gz",
                               "Run records (JSONL; gzip-compressed for a .gz path).")
_REPORT = flags.DEFINE_string("report", "docs/when_mtsl_helps.md", "The document to write.")
_SCRATCH = flags.DEFINE_string("scratch", "workdirs/server_map", "Per-run workdirs.")
_TFDS = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = TFDS's default: "
                            "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")


def _check() -> str | None:
  """The first bad flag as one line, or None."""
  unknown = set(_PHASE_LIST.value) - set(_PHASES)
  if unknown:
    return f"--phases: unknown {sorted(unknown)}; allowed: {', '.join(_PHASES)}"
  if _PROFILE.value not in grid.PROFILES:
    return f"--profile: must be one of {list(grid.PROFILES)}, got {_PROFILE.value!r}"
  profile = grid.PROFILES[_PROFILE.value]
  for name, given, allowed in (("--datasets", _DATASETS.value, list(profile.datasets)),
                               ("--settings", _SETTINGS.value, list(profile.settings)),
                               ("--methods", _METHODS.value, list(profile.methods))):
    bad = [v for v in given if v not in allowed]
    if bad:
      return f"{name}: {bad} not in profile {_PROFILE.value!r}; allowed: {allowed}"
  return None


def _study() -> None:
  paths = runner.Paths(results=pathlib.Path(_RESULTS.value),
                       scratch=pathlib.Path(_SCRATCH.value), tfds_data_dir=_TFDS.value)
  phases = [p for p in _PHASES if p in _PHASE_LIST.value]
  run_phases = [p for p in phases if p != "report"]
  if run_phases:
    runner.run_profile(paths, _PROFILE.value, run_phases, datasets=_DATASETS.value or None,
                       settings=_SETTINGS.value or None, methods=_METHODS.value or None)
  if "report" in phases:
    report.write_report(paths.results, pathlib.Path(_REPORT.value))
    print(f"server_map: wrote {_REPORT.value}", flush=True)


def main() -> int:
  """Runs the chosen phases of the server map; the exit status."""
  problem = _check()
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  return exit_codes.run_reporting_errors(_study)
