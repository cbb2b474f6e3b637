"""What each defence buys: every defended row against its undefended row, paired over seeds.

A defended row and the undefended row of its orientation (`tradeoff.base_row`) share each
seed's data, initialization and minibatches, so the accuracy change and the reduction of
each attack score are compared seed by seed (`statistics.paired`); `readings` says the
result in words. docs/privacy.md prints both (`report`).
"""

import math
from typing import Sequence

from mtsl_jax.comparison import report_format as fmt
from mtsl_jax.comparison import statistics
from mtsl_jax.privacy import tradeoff


# The attack scores that say what the server gains, per MTSL orientation (end of training):
# the labels from the cut gradients, the inputs from the smashed data.
LEAK_SCORES = {"u_shaped": ("label_auc", "recon_classifier_accuracy", "input_dcor"),
               "bottom": ("recon_classifier_accuracy", "input_dcor"),
               "top": ("label_auc",)}


def defence_effects(recs: Sequence[dict]) -> list[dict]:
  """Every defended MTSL row against its orientation's undefended row, paired over seeds.

  A row and its undefended row share the seeds' data, initialization and minibatches, so
  each quantity is compared seed by seed (`statistics.paired`): the accuracy change
  (defended - undefended) and, per attack score of `LEAK_SCORES` at the last recorded
  window, the reduction (undefended - defended). A verdict 'holds' on a reduction means
  the defence lowers that score significantly; on the accuracy, 'fails' means it costs
  accuracy significantly.

  Args:
    recs: privacy records (the latest per profile, row and seed counts).

  Returns:
    One dict per (profile, defended row with records): 'profile', 'row' (tradeoff.Row),
    'n' (paired seeds), 'left_out' (seeds left out: diverged in either row),
    'accuracy' (PairedTest), 'reductions' {score: PairedTest}.
  """
  latest = {(r["profile"], r["row"], r["seed"]): r for r in recs}
  out = []
  for profile in sorted({k[0] for k in latest}):
    for row in tradeoff.rows():
      if row.orientation not in LEAK_SCORES or row.defence == "none":
        continue
      base = tradeoff.base_row(row).name
      seeds = sorted(s for (p, name, s) in latest if p == profile and name == row.name
                     and (profile, base, s) in latest)
      if not seeds:
        continue
      pairs = [(latest[(profile, row.name, s)], latest[(profile, base, s)]) for s in seeds]
      # A seed that diverged has no accuracy or scores to pair: left out, and counted.
      finite = [(d, b) for d, b in pairs if _finite(d["accuracy"]) and _finite(b["accuracy"])]
      left_out, pairs = len(pairs) - len(finite), finite
      if not pairs:
        continue
      effect = {"profile": profile, "row": row, "n": len(pairs), "left_out": left_out,
                "accuracy": statistics.paired([d["accuracy"] for d, _ in pairs],
                                              [b["accuracy"] for _, b in pairs]),
                "reductions": {}}
      for score in LEAK_SCORES[row.orientation]:
        values = [(end_score(b, score), end_score(d, score)) for d, b in pairs]
        if all(v is not None and math.isfinite(v) for pair in values for v in pair):
          effect["reductions"][score] = statistics.paired(*zip(*values))
      out.append(effect)
  return out


def _finite(value) -> bool:
  return value is not None and math.isfinite(value)


def end_score(rec: dict, score: str) -> float | None:
  """`score` at the record's last window (None if that attack did not run)."""
  return rec["attacks"][max(rec["attacks"], key=int)].get(score)


def paired_text(test, scale: float = 1.0, digits: int = 3) -> str:
  """E.g. 'holds +0.412 [0.301, 0.523] (sd 0.045) p=0.004': the mean paired difference,
  its 95% t-interval, the sample std of the per-seed differences and the p-value."""
  d = test.difference
  verdict = statistics.verdict(test)
  if d.n < 2:
    return f"{scale * d.mean:+.{digits}f} (n=1)"
  return (f"{verdict} {scale * d.mean:+.{digits}f} [{fmt.num(scale * d.low, digits)}, "
          f"{fmt.num(scale * d.high, digits)}] (sd {fmt.num(scale * d.std, digits)}) "
          f"{fmt.p_text(test.p)}")


SCORE_NAMES = {"label_auc": "label-inference AUC",
               "recon_classifier_accuracy": "a classifier's accuracy on reconstructed inputs",
               "input_dcor": "dCor(inputs, smashed data)"}


def _size(value: float) -> str:
  """A reduction to 3 decimals, or to 2 significant digits when that would read 0.000 (a
  significant but tiny effect must not look like none)."""
  return f"{value:.3f}" if abs(value) >= 0.0005 else f"{value:.2g}"


def readings(effects: list[dict]) -> list[str]:
  """The trade-off in words: per profile, orientation, attack score and defence, the
  weakest strength that lowers the score significantly, with its accuracy change; or
  that no strength tried does.

  Args:
    effects: `defence_effects`' output.

  Returns:
    One markdown bullet per (profile, orientation, score, defence).
  """
  out = []
  keys = dict.fromkeys((e["profile"], e["row"].family, e["row"].defence) for e in effects)
  for profile, family, defence in keys:
    mine = sorted((e for e in effects if (e["profile"], e["row"].family,
                                          e["row"].defence) == (profile, family, defence)),
                  key=lambda e: e["row"].strength)
    for score in LEAK_SCORES[tradeoff.Row(family, defence, 0.0).orientation]:
      tried = [e for e in mine if score in e["reductions"]]
      if not tried:
        continue
      what = f"{profile}, {family}, {defence}"
      lowers = [e for e in tried if statistics.verdict(e["reductions"][score]) == "holds"]
      if not lowers:
        strengths = ", ".join(f"{e['row'].strength:g}" for e in tried)
        out.append(f"- {what}: no strength tried ({strengths}) lowers "
                   f"{SCORE_NAMES[score]} significantly.")
        continue
      e = lowers[0]
      acc = statistics.verdict(e["accuracy"])
      cost = {"fails": "a significant accuracy cost of",
              "holds": "a significant accuracy gain of",
              "not significant": "an accuracy change (not significant) of"}[acc]
      reduction = e["reductions"][score]
      out.append(f"- {what}: at strength {e['row'].strength:g} (the weakest tried that "
                 f"does) it lowers {SCORE_NAMES[score]} by {_size(reduction.difference.mean)} "
                 f"({fmt.p_text(reduction.p)}), with {cost} "
                 f"{100 * e['accuracy'].difference.mean:+.1f} points"
                 + (f"; and {e['left_out']} seed(s) diverged, left out of both tests"
                    if e.get("left_out") else "") + ".")
  return out
