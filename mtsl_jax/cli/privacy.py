"""Privacy of what travels: MTSL under each defence and strength, attacked on the messages
of its own training, and docs/privacy.md.

  python launch/privacy.py --profile=cpu --tfds_data_dir=DIR   # what a 2-core CPU runs
  python launch/privacy.py --phases=report                     # only the document
  python launch/privacy.py --attack=WORKDIR                    # attack one finished run

Phases: tune_attack (FedAvg's gradient-inversion attacker: every candidate setting of
the profile scored on batches the study does not attack, one line per setting and batch
in results/privacy/attacker_tuning.jsonl; mtsl_jax/privacy/attacker_tuning.py), run
(every row of mtsl_jax/privacy/tradeoff.py not recorded yet: train, record the messages
at the start, middle and end of training, attack them; one line per row and seed in
results/privacy/runs.jsonl), report (docs/privacy.md and its figures, from
the records alone). A defence is a config field (`config.privacy`), so any run of
`launch/train.py` can use one.

Installed as `mtsl-privacy` (`mtsl_jax.cli.commands`); `python launch/privacy.py` runs it
from a clone.
"""

import pathlib
import sys

from absl import flags

from mtsl_jax import exit_codes
from mtsl_jax.privacy import attack_run, attacker_choice, attacker_tuning, report, tradeoff

# tune_attack first: the FedAvg row's attacker settings are checked on their own batches.
_PHASES = ("tune_attack", "run", "report")
_PROFILE = flags.DEFINE_string("profile", "cpu", f"Which rows and budget: one of "
                               f"{list(tradeoff.PROFILES)}.")
_PHASE_LIST = flags.DEFINE_list("phases", list(_PHASES), "Phases to run, in order.")
_RESULTS = flags.DEFINE_string("results", "results/privacy/runs.jsonl", "Records (JSONL).")
_REPORT = flags.DEFINE_string("report", "docs/privacy.md", "The document to write.")
_SCRATCH = flags.DEFINE_string("scratch", "workdirs/privacy", "Per-run workdirs.")
_TFDS = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = TFDS's default: "
                            "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")
_ATTACK = flags.DEFINE_string("attack", "", "Instead of the study: attack the MTSL run in "
                              "this workdir at its latest checkpoint (writes privacy.json "
                              "there).")
_WINDOW = flags.DEFINE_integer("window_steps", 8, "With --attack: steps of the recorded "
                               "window.")


def _check() -> str | None:
  """The first bad flag as one line, or None."""
  if _WINDOW.value < 1:
    return f"--window_steps: must be >= 1, got {_WINDOW.value}"
  unknown = set(_PHASE_LIST.value) - set(_PHASES)
  if unknown:
    return f"--phases: unknown {sorted(unknown)}; allowed: {', '.join(_PHASES)}"
  if _PROFILE.value not in tradeoff.PROFILES:
    return f"--profile: must be one of {list(tradeoff.PROFILES)}, got {_PROFILE.value!r}"
  return None


def _study() -> None:
  if _ATTACK.value:
    scores = attack_run.attack_workdir(_ATTACK.value, _WINDOW.value)
    for name, value in sorted(scores.items()):
      print(f"{name}: {value}")
    print(f"privacy: wrote {pathlib.Path(_ATTACK.value) / 'privacy.json'}", flush=True)
    return
  results = pathlib.Path(_RESULTS.value)
  attacker_results = results.parent / attacker_choice.RESULTS_NAME
  if "tune_attack" in _PHASE_LIST.value:
    attacker_tuning.tune(attacker_results, pathlib.Path(_SCRATCH.value), _PROFILE.value,
                         _TFDS.value)
  if "run" in _PHASE_LIST.value:
    tradeoff.run_profile(results, pathlib.Path(_SCRATCH.value), _PROFILE.value, _TFDS.value)
  if "report" in _PHASE_LIST.value:
    report.write_report(results, pathlib.Path(_REPORT.value), attacker_results)
    print(f"privacy: wrote {_REPORT.value}", flush=True)


def main() -> int:
  """Runs the chosen phases of the privacy study; the exit status."""
  problem = _check()
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  return exit_codes.run_reporting_errors(_study)
