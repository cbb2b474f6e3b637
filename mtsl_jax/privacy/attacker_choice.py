"""Which gradient-inversion setting FedAvg's reference attack uses: read from records.

The attacker's optimization (`gradient_inversion.InversionBudget`) is a hyperparameter of
the attack, tuned like a method's learning rates (`attacker_tuning` runs it): around a
centre, the rate and the TV weight x 1/3 and x 3 and the iterations x 1/2 and x 2, one
axis at a time (`candidates`); the best by mean PSNR over the tuning batches becomes the
next centre, until the centre itself is best (`walk`). The setting chosen is then
interior on every axis. This module holds only that rule, so that the study's runner
(`tradeoff`) and its report can apply it to the records without running anything.
"""

import dataclasses
import math
from typing import Sequence

from mtsl_jax.comparison import statistics
from mtsl_jax.privacy import gradient_inversion

RESULTS_NAME = "attacker_tuning.jsonl"   # beside the study's runs.jsonl
TUNING_BATCHES = 10   # batches of the study's size each setting is scored on, at most
TUNING_SEED = 0       # the FedAvg run whose final model the attacker is tuned against
MAX_ROUNDS = 6   # centres tried at most; the walk then stops where it is (said)
SCORES = ("psnr", "ssim", "classifier_accuracy", "label_accuracy")
# One axis at a time around the centre: (field, factor).
_VARIATIONS = (("learning_rate", 1 / 3), ("learning_rate", 3.0), ("tv_weight", 1 / 3),
               ("tv_weight", 3.0), ("iterations", 0.5), ("iterations", 2.0))


def candidates(centre: gradient_inversion.InversionBudget,
               start: gradient_inversion.InversionBudget | None = None
               ) -> list[gradient_inversion.InversionBudget]:
  """The budgets one round tries: `centre` first, then each of _VARIATIONS applied alone.

  Values sit on the lattice start x factor^k (rates and weights to 3 significant digits,
  iterations to integers), so a walk that returns to a value meets its records again
  (0.01 / 3 x 3 is 0.01, not 0.00999). `start` defaults to `centre`.
  """
  start = start or centre
  out = [centre]
  for field, factor in _VARIATIONS:
    origin, here = getattr(start, field), getattr(centre, field)
    steps = round(math.log(here / origin) / math.log(factor)) if origin else 0
    value = origin * factor ** (steps + 1) if origin else here * factor
    out.append(dataclasses.replace(
        centre, **{field: int(round(value)) if field == "iterations"
                   else float(f"{value:.3g}")}))
  return out


def setting_name(budget: gradient_inversion.InversionBudget) -> str:
  """E.g. 'rate=0.03 tv=0.01 iterations=2000 restarts=2'."""
  return (f"rate={budget.learning_rate:g} tv={budget.tv_weight:g} "
          f"iterations={budget.iterations} restarts={budget.restarts}")


def summarize(recs: Sequence[dict]) -> dict[str, dict[str, dict]]:
  """profile -> setting -> {'budget', 'batches', score: `statistics.t_interval` over the
  batches}, the settings ordered by rate, TV weight, iterations, restarts."""
  latest = {(r["profile"], r["setting"], r["batch"]): r for r in recs}

  def order(item):
    (profile, _, batch), r = item
    b = r["budget"]
    return profile, b["learning_rate"], b["tv_weight"], b["iterations"], b["restarts"], batch

  grouped: dict[str, dict[str, list[dict]]] = {}
  for (profile, setting, _), r in sorted(latest.items(), key=order):
    grouped.setdefault(profile, {}).setdefault(setting, []).append(r)
  out = {}
  for profile, settings in grouped.items():
    out[profile] = {}
    for setting, runs in settings.items():
      row = {"budget": runs[0]["budget"], "batches": len(runs)}
      for score in SCORES:
        values = [r["scores"][score] for r in runs if r["scores"].get(score) is not None]
        row[score] = statistics.t_interval(values) if values else None
      out[profile][setting] = row
  return out


def best(settings: dict[str, dict], among: Sequence[str] | None = None) -> str:
  """The setting with the highest mean PSNR (the criterion), among `among` (default:
  all); ties go to the first listed."""
  names = list(among) if among is not None else list(settings)
  return max(names, key=lambda name: (settings[name]["psnr"].mean, -names.index(name)))


@dataclasses.dataclass(frozen=True)
class Walk:
  """Where the tuning stands.

  Attributes:
    centres: the centres visited, in order (each round's).
    missing: the candidates of the last centre not recorded on every batch (empty: the
      round is complete).
    chosen: the setting the study uses, once the walk has ended (its centre was best, or
      MAX_ROUNDS centres were visited); None while rounds remain to run.
  """
  centres: tuple[gradient_inversion.InversionBudget, ...]
  missing: tuple[gradient_inversion.InversionBudget, ...]
  chosen: gradient_inversion.InversionBudget | None


def walk(settings: dict[str, dict], start: gradient_inversion.InversionBudget) -> Walk:
  """Replays the tuning over a profile's recorded settings.

  Args:
    settings: `summarize(...)[profile]` ({} when nothing is recorded). Every setting is
      scored on the same batches, so one with fewer than the most recorded is incomplete.
    start: the profile's budget, the first centre.

  Returns:
    The `Walk`.
  """
  batches = max((s["batches"] for s in settings.values()), default=0)
  centre, centres = start, []
  while True:
    centres.append(centre)
    round_ = candidates(centre, start)
    missing = tuple(b for b in round_ if setting_name(b) not in settings
                    or settings[setting_name(b)]["batches"] < batches)
    if missing:
      return Walk(tuple(centres), missing, None)
    top = best(settings, [setting_name(b) for b in round_])
    if top == setting_name(centre) or len(centres) == MAX_ROUNDS:
      return Walk(tuple(centres), (), centre if top == setting_name(centre)
                  else next(b for b in round_ if setting_name(b) == top))
    centre = next(b for b in round_ if setting_name(b) == top)


def chosen(recs: Sequence[dict], profile: str,
           start: gradient_inversion.InversionBudget) -> gradient_inversion.InversionBudget | None:
  """The setting a profile's FedAvg row uses: the end of its walk over the records (None:
  not tuned yet, or the walk has rounds left to run)."""
  return walk(summarize(recs).get(profile, {}), start).chosen


def paired_gain(recs: Sequence[dict], profile: str, setting: str, reference: str,
                score: str = "psnr") -> statistics.PairedTest | None:
  """`setting` minus `reference` on the batches both scored, paired batch by batch (the
  batches differ far more than the settings do); None with fewer than two batches."""
  by = {(r["setting"], r["batch"]): r["scores"].get(score) for r in recs
        if r["profile"] == profile}
  batches = sorted(b for (name, b), v in by.items() if name == setting and v is not None
                   and by.get((reference, b)) is not None)
  if len(batches) < 2:
    return None
  return statistics.paired([by[(setting, b)] for b in batches],
                           [by[(reference, b)] for b in batches])
