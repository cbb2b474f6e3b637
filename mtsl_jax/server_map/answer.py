"""The server map's answer in words, from its difference maps and ablations.

What docs/when_mtsl_helps.md says before its figures and tables: a short answer per cut
(helps in most cells, in some, or not; chance wins discounted), counts of wins, ties and
losses per map and pooled per profile, with the verdicts more training could change
(`analysis.budget_bound`), and what each ablation supports per MTSL row. Pure functions
of `analysis`'s outputs, returning markdown lines; `report` assembles the document.
"""

import collections
from typing import Sequence

from mtsl_jax.server_map import analysis, grid


def examples_label(examples: int) -> str:
  """An examples-per-client level as the document writes it: 0 (no cap) is 'all'."""
  return "all" if examples == 0 else str(examples)


def regime_text(regime: tuple[int, int]) -> str:
  """An (examples, clients) cell in words: '100 examples x 50 clients'."""
  return f"{examples_label(regime[0])} examples x {regime[1]} clients"


def map_label(map_key: tuple) -> str:
  """A (profile, dataset, setting) map as the document names it."""
  profile, dataset, setting = map_key
  return f"{dataset} / {setting} ({profile})"


def answer(maps: dict, diffs: dict, ablations: dict) -> list[str]:
  """The document's section 'The answer'.

  Args:
    maps: `analysis.maps` of the records.
    diffs: `analysis.differences`.
    ablations: `analysis.ablations`.

  Returns:
    Markdown lines: the short answer, the win / tie / lose table per map and cut, each
    map's verdict in a line, the pooled counts and what the ablations support.
  """
  lines = ["## The answer", ""]
  if not diffs:
    return lines + ["No map cell is recorded yet: no answer. Run "
                    "`python launch/server_map.py --profile=cpu --tfds_data_dir=DIR`.", ""]
  lines += ["Per map and cut: in how many cells MTSL is significantly better (wins), not "
            "significantly different (ties) or significantly worse (loses) than the best of "
            "local-only and FedAvg, and than FedRep (paired t-tests over seeds, 5%). A "
            "verdict is *budget-bound* where the side it goes against was still rising at "
            "the end of its budget (a win over a baseline, a loss of MTSL, a tie with either, "
            "with some seed not plateaued: `analysis.budget_bound`), so that more training "
            "could change it.", "", *short_answer(diffs),
            "| map | MTSL cut | vs best of local and FedAvg: win / tie / lose | "
            "vs FedRep: win / tie / lose | cells where MTSL beats both |",
            "|---|---|---|---|---|"]
  verdict_lines = []
  for map_key in sorted(maps):
    for mtsl in analysis.MTSL_ROWS:
      pair = [diffs.get((*map_key, mtsl, name), {}) for name in analysis.VERSUS]
      if not pair[0] and not pair[1]:
        continue
      counts = [analysis.tally(d) for d in pair]
      both = sorted((r for r in pair[0] if pair[0][r]["verdict"] == "holds"
                     and pair[1].get(r, {}).get("verdict") == "holds"),
                    key=lambda r: (r[1], r[0] == 0, r[0]))
      cells_text = ", ".join(regime_text(r) for r in both) or "none"
      lines.append(f"| {map_label(map_key)} | {mtsl} | "
                   + " | ".join(f"{c['holds']} / {c['not significant']} / {c['fails']}"
                                for c in counts) + f" | {cells_text} |")
      n_cells = len(pair[0])
      testable = sum(1 for c in pair[0].values() if c["n"] >= 2)
      if testable and counts[0]["holds"] == 0:
        verdict_lines.append(
            f"- {map_label(map_key)}, {mtsl}: **it does not help** against the better of "
            f"local-only and FedAvg in any of the {testable} cells with two or more seeds "
            f"({counts[0]['fails']} significantly worse).")
      elif n_cells:
        wins = sorted((r for r in pair[0] if pair[0][r]["verdict"] == "holds"),
                      key=lambda r: (r[1], r[0] == 0, r[0]))
        verdict_lines.append(
            f"- {map_label(map_key)}, {mtsl}: better than the better of local-only and "
            f"FedAvg in {len(wins)} of {n_cells} cells: "
            + "; ".join(regime_text(r) + (" (budget-bound)" if pair[0][r]["budget_bound"]
                                           else "") for r in wins) + ".")
  lines += ["", *verdict_lines, ""]
  lines += in_short(diffs)
  lines += mechanism(ablations)
  return lines


def _counts(cells: dict, keep=lambda key: True) -> str:
  """'wins / ties / losses' of the cells whose key `keep` accepts."""
  verdicts = [c["verdict"] for key, c in cells.items() if keep(key)]
  return " / ".join(str(verdicts.count(v)) for v in ("holds", "not significant", "fails"))


def _wins_by(cells: dict, axis: int, label) -> str:
  """Wins per level of one axis of the cell keys, e.g. '25: 3 of 6, 100: 5 of 6'."""
  levels = sorted({key[axis] for key in cells}, key=lambda v: (v == 0, v))
  parts = []
  for level in levels:
    mine = [c for key, c in cells.items() if key[axis] == level]
    parts.append(f"{label(level)}: {sum(c['verdict'] == 'holds' for c in mine)} "
                 f"of {len(mine)}")
  return ", ".join(parts)


def _pooled(diffs: dict, profile: str, mtsl: str) -> dict[str, dict[tuple, dict]]:
  """One cut's cells over every map of a profile, per comparison.

  Returns:
    comparison -> (dataset, setting, examples, clients) -> the cell's claim.
  """
  return {name: {(k[1], k[2], *regime): c for k, d in diffs.items()
                 if k[0] == profile and k[3] == mtsl and k[4] == name
                 for regime, c in d.items()} for name in analysis.VERSUS}


def _share_text(profile: str, mtsl: str, cells: dict) -> str:
  """', 1.1% of the parameters on the client' for a cut (empty: unknown model)."""
  costs = analysis.cut_table(profile, min(k[0] for k in cells)).get(mtsl[len("mtsl_"):])
  return "" if costs is None else (f", {100 * costs.client_param_share:.1f}% of the "
                                   "parameters on the client")


# Wins a cut may have and still be said not to help: a two-sided 5% test calls a cell with
# no true difference a win 2.5% of the time, so up to 5% of cells is what chance gives.
_CHANCE_WINS = 0.05
_BASELINE_NAMES = {"local": "local-only", "fedavg": "FedAvg", "fedrep": "FedRep"}


def short_answer(diffs: dict) -> list[str]:
  """The answer in words, per profile: which cuts help, tie or lose, and against what.

  A cut 'does not help' when it wins no more than 5% of its cells (what chance gives at
  the tests' level, said when not zero), 'helps in most cells' when it wins more
  than half, 'helps in some cells' in between (wins against the better of local-only and
  FedAvg); its losses are said with the baseline that beat it.

  Args:
    diffs: `analysis.differences`.

  Returns:
    Markdown lines, one paragraph per profile.
  """
  lines = []
  for profile in sorted({k[0] for k in diffs}):
    sentences = []
    for mtsl in analysis.MTSL_ROWS:
      cells = _pooled(diffs, profile, mtsl)["best of local and FedAvg"]
      if not cells:
        continue
      verdicts = [c["verdict"] for c in cells.values()]
      wins, losses = verdicts.count("holds"), verdicts.count("fails")
      if wins <= _CHANCE_WINS * len(cells):
        phrase = "does not help"
        if wins:
          phrase += (f" (its {wins} win{'s' if wins > 1 else ''} in {len(cells)} cells "
                     f"{'are' if wins > 1 else 'is'} "
                     "no more than chance gives: with no difference, a two-sided 5% test "
                     "calls 2.5% of cells a win)")
      else:
        phrase = "helps in most cells" if 2 * wins > len(cells) else "helps in some cells"
      by_setting = ", ".join(
          f"{setting} {sum(c['verdict'] == 'holds' for k, c in cells.items() if k[1] == setting)}"
          f" of {sum(k[1] == setting for k in cells)}"
          for setting in sorted({k[1] for k in cells}))
      beaten_by = collections.Counter(c["baseline"] for c in cells.values()
                                      if c["verdict"] == "fails")
      lost = ("; it loses " + ", ".join(f"{n} to {_BASELINE_NAMES[b]}"
                                        for b, n in sorted(beaten_by.items()))
              if losses else "; it loses none")
      bound = sum(c["budget_bound"] for c in cells.values() if c["verdict"] == "holds")
      sentences.append(
          f"- **{mtsl}**, the client holding {grid.CUTS[mtsl[len('mtsl_'):]].description}"
          f"{_share_text(profile, mtsl, cells)}: **{phrase}**. It wins {wins} of "
          f"{len(cells)} cells ({bound} of the wins budget-bound; by heterogeneity "
          f"{by_setting}), ties {verdicts.count('not significant')}{lost}.")
    lines += [f"**Short answer, profile {profile}** (against the better of local-only and "
              "FedAvg in each cell; details, FedRep and the ablations below):", "",
              *sentences, ""]
  return lines


def in_short(diffs: dict) -> list[str]:
  """Each cut over every map of a profile: its wins, ties and losses in total (and how
  many of them are budget-bound), per heterogeneity, and its wins per level of each axis
  (where the wins lie).

  Args:
    diffs: `analysis.differences`.

  Returns:
    Markdown lines, one list per profile.
  """
  lines = []
  for profile in sorted({k[0] for k in diffs}):
    lines += [f"In short, profile {profile}: every map of the profile pooled, as win / tie "
              "/ lose cells against the better of local-only and FedAvg (and FedRep):", ""]
    for mtsl in analysis.MTSL_ROWS:
      versus = _pooled(diffs, profile, mtsl)
      cells = versus["best of local and FedAvg"]
      if not cells:
        continue
      settings = "; ".join(f"{setting} {_counts(cells, lambda k, s=setting: k[1] == s)}"
                           for setting in sorted({k[1] for k in cells}))
      cut = mtsl[len("mtsl_"):]
      share = _share_text(profile, mtsl, cells)
      lines.append(
          f"- {mtsl}, the client holding {grid.CUTS[cut].description}{share}: "
          f"{_counts(cells)} of {len(cells)} cells (FedRep: {_counts(versus['FedRep'])}); "
          f"budget-bound of those: {_counts(cells, lambda k, c=cells: c[k]['budget_bound'])}; "
          f"by heterogeneity: {settings}. Wins per examples per client: "
          f"{_wins_by(cells, 2, examples_label)}; per number of clients: "
          f"{_wins_by(cells, 3, str)}.")
    lines.append("")
  return lines


# What each ablation's verdicts mean (ablated MTSL minus MTSL): 'fails' (the ablated row
# is significantly worse), 'holds' (better), otherwise no measurable effect.
_READINGS = {
    "frozen_server": ("the learned shared server part carries accuracy: random server "
                      "features do worse",
                      "random server features do better than the learned ones",
                      "random server features do as well: the learned server part adds "
                      "nothing measurable here"),
    "common_init": ("starting every client from one initialisation costs accuracy",
                    "one common initialisation helps",
                    "no measurable effect of starting every client from one "
                    "initialisation"),
    "data_size_weights": ("weighting tasks by data size costs accuracy",
                          "weighting tasks by data size helps",
                          "no measurable effect of weighting tasks by data size"),
    "data_size_rates": ("scaling client rates by data size costs accuracy",
                        "scaling client rates by data size helps",
                        "no measurable effect of scaling client rates by data size"),
}


# Why an ablation can leave a run unchanged (its accuracy equal to the MTSL row's on every
# seed): data-size weights and rate multipliers are uniform when every client holds the
# same number of examples (label permutation; a cap that every client reaches).
IDENTICAL_WHY = {"data_size_weights": " (every client holds the same examples)",
                  "data_size_rates": " (every client holds the same examples)"}


def mechanism(ablations: dict) -> list[str]:
  """Each ablation's verdicts, per MTSL row of each profile, with what they support.

  Split by row because a cut decides what the server part holds: freezing a server that
  holds the input layers and freezing one that holds a middle block are different
  experiments, and pooling them would blur the mechanism.

  Args:
    ablations: `analysis.ablations`.

  Returns:
    Markdown lines: one item per ablation, one sub-item per (profile, MTSL row).
  """
  if not ablations:
    return ["The ablations are not recorded yet: the mechanism is open.", ""]
  lines = ["What the ablations support (each ablated row minus its MTSL row, per MTSL row "
           "over its ablation cells):", ""]
  rows = sorted({(k[0], k[5]) for k in ablations})
  for ablation, (_, what) in grid.ABLATIONS.items():
    parts = []
    for profile, mtsl in rows:
      found = [c[ablation] for k, c in ablations.items()
               if (k[0], k[5]) == (profile, mtsl) and ablation in c]
      if found:
        parts.append(f"  - {mtsl} ({profile}): " + ablation_reading(ablation, found))
    if parts:
      lines += [f"- {what}:", *parts]
  lines += ["- no server part at all (each client owns the whole model): that is the "
            "local-only row of the map, above.", ""]
  return lines


def ablation_reading(ablation: str, found: Sequence[dict]) -> str:
  """One MTSL row's cells of one ablation: counts, span of differences, and the reading.

  Args:
    ablation: a key of grid.ABLATIONS.
    found: the row's `analysis.ablations` claims of that ablation, one per cell.

  Returns:
    One sentence; cells where the ablation changed nothing are counted apart.
  """
  # A cell where the ablation changed nothing is no evidence either way: counted apart.
  unchanged = sum(bool(c.get("identical")) for c in found)
  found = [c for c in found if not c.get("identical")]
  counts = {v: sum(c["verdict"] == v for c in found) for v in
            ("holds", "not significant", "fails")}
  means = [100 * c["mean"] for c in found if c["mean"] is not None]
  if not means:
    span = "no difference measured"
  elif len(means) == 1:
    span = f"difference {means[0]:+.1f} points"
  else:
    span = f"differences from {min(means):+.1f} to {max(means):+.1f} points"
  worse, better, none = _READINGS[ablation]
  if 0 < counts["fails"] < len(found):  # an effect seen in some cells, not in all
    worse += f" in {counts['fails']} of its {len(found)} cells, nothing measurable in the rest"
  if 0 < counts["holds"] < len(found):
    better += f" in {counts['holds']} of its {len(found)} cells, nothing measurable in the rest"
  diverged = sum(c["diverged"] for c in found)
  if diverged:  # a seed that diverged is a loss the paired test cannot see
    none = (f"{diverged} seed(s) diverged in {sum(c['diverged'] > 0 for c in found)} "
            "cell(s), left out of the tests: unstable at the MTSL row's rates")
  if not found:
    reading = "no cell run could show its effect"
  elif counts["fails"] and not counts["holds"]:
    reading = worse
  elif counts["holds"] and not counts["fails"]:
    reading = better
  elif counts["holds"] and counts["fails"]:
    reading = "it depends on the cell (see the ablation table)"
  else:
    reading = none
  same = (f"; in {unchanged} more it changed nothing{IDENTICAL_WHY.get(ablation, '')}"
          if unchanged else "")
  cells = "cell" if counts["fails"] == 1 else "cells"
  return (f"{counts['fails']} {cells} significantly worse, {counts['not significant']} not "
          f"significant, {counts['holds']} better ({span}){same}; {reading}.")
