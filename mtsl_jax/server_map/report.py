"""docs/when_mtsl_helps.md and its figures, generated from the server map's records alone.

`write_report(results, document)` reads the JSONL of run records (`runner.KEY_FIELDS`),
computes every number with `analysis`, draws the figures under
`<document dir>/figures/server_map/`, and writes the markdown: the answer in words (counts
of cells where MTSL wins, ties and loses, per cut, and what the ablations support), the
difference heatmaps with the significant cells marked, every cell's verdict with its
interval, the ablation table, the cuts, the tuned points, and what is reduced. Partial
records give a partial document that says what is missing. The output depends on the
records only (sorted orders, no dates): writing it twice gives the same files.
"""

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from mtsl_jax.comparison import records, v2_analysis, v2_report
from mtsl_jax.comparison import report_format as fmt
from mtsl_jax.server_map import analysis, grid, runner
# pylint: enable=wrong-import-position

REGENERATE = "python launch/server_map.py --phases=report"
_MARK = {"holds": "▲", "fails": "▼", "not significant": ""}


def _examples_label(examples: int) -> str:
  return "all" if examples == 0 else str(examples)


def _regime_text(regime: tuple[int, int]) -> str:
  return f"{_examples_label(regime[0])} examples x {regime[1]} clients"


def _map_label(map_key: tuple) -> str:
  profile, dataset, setting = map_key
  return f"{dataset} / {setting} ({profile})"


def _axes(regimes: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
  """The examples levels (columns, 'all' last) and client counts (rows) of a map."""
  examples = sorted({e for e, _ in regimes}, key=lambda e: (e == 0, e))
  clients = sorted({m for _, m in regimes})
  return examples, clients


# ---- the answer in words -------------------------------------------------------------------


def _answer(maps: dict, diffs: dict, ablations: dict) -> list[str]:
  lines = ["## The answer", ""]
  if not diffs:
    return lines + ["No map cell is recorded yet: no answer. Run "
                    "`python launch/server_map.py --profile=cpu --tfds_data_dir=DIR`.", ""]
  lines += ["Per map and cut: in how many cells MTSL is significantly better (wins), not "
            "significantly different (ties) or significantly worse (loses) than the best of "
            "local-only and FedAvg, and than FedRep (paired t-tests over seeds, 5%).", "",
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
      cells_text = ", ".join(_regime_text(r) for r in both) or "none"
      lines.append(f"| {_map_label(map_key)} | {mtsl} | "
                   + " | ".join(f"{c['holds']} / {c['not significant']} / {c['fails']}"
                                for c in counts) + f" | {cells_text} |")
      n_cells = len(pair[0])
      testable = sum(1 for c in pair[0].values() if c["n"] >= 2)
      if testable and counts[0]["holds"] == 0:
        verdict_lines.append(
            f"- {_map_label(map_key)}, {mtsl}: **it does not help** against the better of "
            f"local-only and FedAvg in any of the {testable} cells with two or more seeds "
            f"({counts[0]['fails']} significantly worse).")
      elif n_cells:
        wins = sorted((r for r in pair[0] if pair[0][r]["verdict"] == "holds"),
                      key=lambda r: (r[1], r[0] == 0, r[0]))
        verdict_lines.append(
            f"- {_map_label(map_key)}, {mtsl}: better than the better of local-only and "
            f"FedAvg in {len(wins)} of {n_cells} cells: "
            + "; ".join(_regime_text(r) for r in wins) + ".")
  lines += ["", *verdict_lines, ""]
  lines += _in_short(diffs)
  lines += _mechanism(ablations)
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


def _in_short(diffs: dict) -> list[str]:
  """Each cut over every map of a profile: its wins, ties and losses in total, per
  heterogeneity, and its wins per level of each axis (where the wins lie)."""
  lines = []
  for profile in sorted({k[0] for k in diffs}):
    lines += [f"In short, profile {profile}: every map of the profile pooled, as win / tie "
              "/ lose cells against the better of local-only and FedAvg (and FedRep):", ""]
    for mtsl in analysis.MTSL_ROWS:
      # (dataset, setting, examples, clients) -> the cell's claim, per comparison.
      versus = {name: {(k[1], k[2], *regime): c for k, d in diffs.items()
                       if k[0] == profile and k[3] == mtsl and k[4] == name
                       for regime, c in d.items()} for name in analysis.VERSUS}
      cells = versus["best of local and FedAvg"]
      if not cells:
        continue
      settings = "; ".join(f"{setting} {_counts(cells, lambda k, s=setting: k[1] == s)}"
                           for setting in sorted({k[1] for k in cells}))
      cut = mtsl[len("mtsl_"):]
      costs = analysis.cut_table(profile, min(k[0] for k in cells)).get(cut)
      share = "" if costs is None else (f", {100 * costs.client_param_share:.1f}% of the "
                                        "parameters on the client")
      lines.append(
          f"- {mtsl}, the client holding {grid.CUTS[cut].description}{share}: "
          f"{_counts(cells)} of {len(cells)} cells (FedRep: {_counts(versus['FedRep'])}); "
          f"by heterogeneity: {settings}. Wins per examples per client: "
          f"{_wins_by(cells, 2, _examples_label)}; per number of clients: "
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
_IDENTICAL_WHY = {"data_size_weights": " (every client holds the same examples)",
                  "data_size_rates": " (every client holds the same examples)"}


def _mechanism(ablations: dict) -> list[str]:
  if not ablations:
    return ["The ablations are not recorded yet: the mechanism is open.", ""]
  lines = ["What the ablations support (each ablated row minus its MTSL row, over every "
           "ablation cell):", ""]
  for ablation, (_, what) in grid.ABLATIONS.items():
    found = [c[ablation] for c in ablations.values() if ablation in c]
    if not found:
      continue
    # A cell where the ablation changed nothing is no evidence either way: counted apart.
    unchanged = sum(bool(c.get("identical")) for c in found)
    found = [c for c in found if not c.get("identical")]
    counts = {v: sum(c["verdict"] == v for c in found) for v in
              ("holds", "not significant", "fails")}
    means = [100 * c["mean"] for c in found if c["mean"] is not None]
    span = (f"differences from {min(means):+.1f} to {max(means):+.1f} points" if means
            else "no difference measured")
    worse, better, none = _READINGS[ablation]
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
    same = (f"; in {unchanged} more it changed nothing"
            f"{_IDENTICAL_WHY.get(ablation, '')}" if unchanged else "")
    lines.append(f"- {what}: {counts['fails']} cells significantly worse, "
                 f"{counts['not significant']} not significant, {counts['holds']} better "
                 f"({span}){same}; {reading}.")
  lines += ["- no server part at all (each client owns the whole model): that is the "
            "local-only row of the map, above.", ""]
  return lines


# ---- heatmaps ------------------------------------------------------------------------------


def _plot_differences(map_key: tuple, comparison: str, diffs: dict, regimes: dict,
                      out: pathlib.Path) -> pathlib.Path | None:
  """One panel per cut: MTSL minus the comparison, points; ▲ significant win, ▼ loss.

  An 'all' cell also shows the mean train examples per client it held (n).
  """
  rows = [(m, diffs[(*map_key, m, comparison)]) for m in analysis.MTSL_ROWS
          if (*map_key, m, comparison) in diffs]
  if not rows:
    return None
  examples, clients = _axes(regimes)
  values = [100 * c["mean"] for _, d in rows for c in d.values() if c["mean"] is not None]
  bound = max([abs(v) for v in values] + [1.0])
  fig, axes = plt.subplots(1, len(rows), figsize=(3.3 * len(rows), 2.9), squeeze=False,
                           layout="constrained")
  image = None
  for ax, (mtsl, d) in zip(axes[0], rows):
    matrix = np.full((len(clients), len(examples)), np.nan)
    for (e, m), c in d.items():
      if c["mean"] is None:
        continue
      i, j = clients.index(m), examples.index(e)
      matrix[i, j] = 100 * c["mean"]
      text = f"{100 * c['mean']:+.1f}{_MARK[c['verdict']]}"
      held = analysis.mean_train_examples(regimes[(e, m)]) if e == 0 else None
      if held is not None:
        text += f"\nn={held:.0f}"
      ax.text(j, i, text, ha="center", va="center", fontsize=7)
    image = ax.imshow(matrix, origin="lower", aspect="auto", cmap="RdBu", vmin=-bound,
                      vmax=bound)
    ax.set_xticks(range(len(examples)), [_examples_label(e) for e in examples], fontsize=7)
    ax.set_yticks(range(len(clients)), [str(m) for m in clients], fontsize=7)
    ax.set_xlabel("train examples per client", fontsize=8)
    ax.set_ylabel("clients", fontsize=8)
    ax.set_title(mtsl, fontsize=9)
  fig.colorbar(image, ax=axes[0].tolist(), label="accuracy difference (points)")
  fig.suptitle(f"{_map_label(map_key)}: MTSL minus {comparison}; ▲/▼ significant (paired, "
               "5%), blank not run", fontsize=9)
  path = out / f"{fmt.slug('difference', *map_key, comparison)}.png"
  fig.savefig(path, dpi=80, metadata={"Software": None})
  plt.close(fig)
  return path


def _heatmaps(maps: dict, diffs: dict, figures: pathlib.Path, doc_dir: pathlib.Path):
  lines = ["## Difference maps", "",
           "Each panel is one cut; each cell the mean over seeds of MTSL's final mean per-task "
           "test accuracy minus the comparison's, in points, with ▲ where MTSL is "
           "significantly better and ▼ where it is significantly worse (paired t-test over "
           "the seeds both finished, 5%). Every cell's interval, p and n are in the tables "
           "below.", ""]
  for map_key in sorted(maps):
    for comparison in analysis.VERSUS:
      path = _plot_differences(map_key, comparison, diffs, maps[map_key], figures)
      if path is not None:
        lines += [f"![{_map_label(map_key)}: MTSL minus {comparison}]"
                  f"({path.relative_to(doc_dir).as_posix()})", ""]
  return lines


# ---- tables ---------------------------------------------------------------------------------


def _accuracy_tables(maps: dict) -> list[str]:
  lines = ["## Accuracy per cell", "",
           "Final mean per-task test accuracy (%), mean ± 95% t half-width over seeds and "
           "(sd) the sample std (ddof = 1); † marks a cell where some seed had not "
           "plateaued by the end of its budget (`statistics.plateaued`: its last 20% of "
           "evaluations gained 0.3 points or more over the best before them); 'n' is the "
           "mean train examples per client actually held.", ""]
  for map_key in sorted(maps):
    regimes = maps[map_key]
    methods = [m for m in grid.METHODS if any(m in v for v in regimes.values())]
    lines += [f"### {_map_label(map_key)}", "",
              "| clients | examples | n | " + " | ".join(methods) + " |",
              "|---|---|---|" + "---|" * len(methods)]
    for regime in sorted(regimes, key=lambda r: (r[1], r[0] == 0, r[0])):
      cell = regimes[regime]
      n = analysis.mean_train_examples(cell)
      values = []
      for m in methods:
        s = cell.get(m)
        if s is None:
          values.append("not run")
          continue
        mark = "" if s["all_plateaued"] in (True, None) else " †"
        diverged = f" ({len(s['diverged'])} diverged)" if s["diverged"] else ""
        values.append(fmt.interval_with_std(s["accuracy"], 100) + mark + diverged)
      lines.append(f"| {regime[1]} | {_examples_label(regime[0])} | "
                   f"{'—' if n is None else f'{n:.0f}'} | " + " | ".join(values) + " |")
    lines.append("")
  return lines


def _difference_tables(maps: dict, diffs: dict) -> list[str]:
  lines = ["## Every cell's verdict", "",
           "MTSL minus the comparison, accuracy points: verdict, mean [95% interval], p, "
           "seeds (and, against the best of local-only and FedAvg, which of the two it was).",
           ""]
  for map_key in sorted(maps):
    for comparison in analysis.VERSUS:
      rows = [m for m in analysis.MTSL_ROWS if (*map_key, m, comparison) in diffs]
      if not rows:
        continue
      lines += [f"### {_map_label(map_key)}: MTSL minus {comparison}", "",
                "| clients | examples | " + " | ".join(rows) + " |",
                "|---|---|" + "---|" * len(rows)]
      for regime in sorted(maps[map_key], key=lambda r: (r[1], r[0] == 0, r[0])):
        cells = []
        for m in rows:
          c = diffs[(*map_key, m, comparison)].get(regime)
          text = fmt.verdict_text(c, "not run")
          if c is not None and len(analysis.VERSUS[comparison]) > 1:
            text += f" ({c['baseline']})"
          cells.append(text)
        lines.append(f"| {regime[1]} | {_examples_label(regime[0])} | " + " | ".join(cells)
                     + " |")
      lines.append("")
  return lines


def _ablation_table(ablations: dict) -> list[str]:
  lines = ["## Ablations", "",
           "Each ablated MTSL row minus the MTSL row at the same cell and seeds, accuracy "
           "points (verdict, mean [95% interval], p, seeds); 'holds' means the ablation is "
           "better, 'fails' that it is worse. The ablations: "
           + "; ".join(f"`{name}`: {what}" for name, (_, what) in grid.ABLATIONS.items())
           + ". No server part at all is the local-only column of the accuracy tables.", ""]
  if not ablations:
    return lines + ["Not run yet.", ""]
  names = list(grid.ABLATIONS)
  lines += ["| map | cell | MTSL row | " + " | ".join(names) + " |",
            "|---|---|---|" + "---|" * len(names)]
  for key in sorted(ablations, key=lambda k: (k[:3], k[4], k[3] == 0, k[3], k[5])):
    row = ablations[key]
    lines.append(f"| {_map_label(key[:3])} | {_regime_text(key[3:5])} | {key[5]} | "
                 + " | ".join(_ablation_cell(n, row.get(n)) for n in names) + " |")
  return lines + [""]


def _ablation_cell(ablation: str, comparison: dict | None) -> str:
  """The paired verdict, and the ablated seeds that diverged (left out of the test: a
  loss the test itself cannot show); an ablation that changed nothing says so."""
  if comparison and comparison.get("identical"):
    return f"no change: the MTSL row's run{_IDENTICAL_WHY.get(ablation, '')} n={comparison['n']}"
  text = fmt.verdict_text(comparison, "not run")
  if comparison and comparison.get("diverged"):
    text += f"; {comparison['diverged']} seed(s) diverged, left out"
  return text


def _cuts(summ: dict) -> list[str]:
  lines = ["## The cuts", "",
           "Each cut's share of the parameters and forward FLOPs on one client and on the "
           "server (`mtsl_jax.cut_costs`), on each profile's model.", "",
           "| profile | dataset | model | cut | the client holds | division |",
           "|---|---|---|---|---|---|"]
  for profile, dataset in sorted({k[:2] for k in summ}):
    for name, costs in analysis.cut_table(profile, dataset).items():
      lines.append(f"| {profile} | {dataset} | {analysis.model_text(profile, dataset)} | "
                   f"mtsl_{name} | {grid.CUTS[name].description} | {costs.describe()} |")
  return lines + [""]


def _tuning(recs: Sequence[dict], figures: pathlib.Path, doc_dir: pathlib.Path) -> list[str]:
  grids = v2_analysis.tuning_grids(recs)
  lines = ["## Tuning", "",
           "Every method on the comparison v2's grids (split methods: server x client rate, "
           "two decades in half decades; FedAvg and FedRep: client x FedOpt server rate; "
           "one-rate methods: 25 points over four decades), at the profile's tuning regime "
           "on a 10% validation split, seed 0; an axis grows by a half decade while the best "
           "point lies on its edge (at most twice per side). The map reuses each method's "
           "point in every cell.", "",
           "| profile | dataset | method | runs | server rate | client rate | interior |",
           "|---|---|---|---|---|---|---|"]
  for (profile, dataset, method), g in grids.items():
    chosen = g["chosen"] or {}
    lines.append(f"| {profile} | {dataset} | {method} | {g['runs']} | "
                 f"{chosen.get('server_lr', '—')} | {chosen.get('client_lr', '—')} | "
                 f"{'yes' if g['interior'] else 'NO'} |")
  lines.append("")
  for profile, dataset in sorted({k[:2] for k in grids}):
    path = v2_report.plot_tuning(grids, profile, dataset, figures)
    lines += [f"![tuning {dataset} ({profile})]({path.relative_to(doc_dir).as_posix()})", ""]
  return lines


def _provenance(recs: Sequence[dict], summ: dict) -> list[str]:
  runs = [r for s in summ.values() for r in s["runs"]]
  tuning = len({runner.key(r) for r in recs if r["phase"] == "tune"})
  machines = sorted({v2_analysis.machine(r.get("where")) for r in recs})
  reductions = {}  # profile -> its map runs' reductions, in order
  for r in runs:
    reductions.setdefault(r["profile"], {}).update(dict.fromkeys(r.get("reductions") or []))
  plateaued = sum(1 for s in summ.values() if s["all_plateaued"])
  return ["## What ran", "",
          f"{tuning} tuning runs and {len(runs)} map and ablation runs in {len(summ)} "
          f"cells (each run counted once), of which {plateaued} "
          "reached a plateau in every seed.", "",
          "Computed on: " + "; ".join(machines) + ".", "",
          "Reductions against the full study, per profile (every record names its own):",
          "", *[f"- {profile}: " + "; ".join(items) for profile, items in
                sorted(reductions.items())], "",
          "Budgets are client steps of 32 examples per client; FedAvg and FedRep take 5 "
          "local steps per round (FedRep: 5 head steps, then 5 body steps), so every method "
          "gets the same client steps. Examples per client caps each client's train "
          "examples (a uniform subset); 'all' keeps the partition's. A cap is run only "
          "where cap x clients fits in the 60,000 train examples, so 'all' stands for the "
          "larger caps at 50 and 200 clients.", ""]


def write_report(results: pathlib.Path, document: pathlib.Path) -> None:
  """Writes the document and its figures from the records at `results`.

  Args:
    results: the JSONL of run records.
    document: the markdown file to write; figures go to <its dir>/figures/server_map/.
  """
  recs = records.ResultsFile(results).load()
  summ = analysis.summaries(recs)
  maps = analysis.maps(summ)
  diffs = analysis.differences(summ)
  ablations = analysis.ablations(summ)
  doc_dir = document.parent
  figures = doc_dir / "figures" / "server_map"
  figures.mkdir(parents=True, exist_ok=True)
  lines = ["# When does the shared server part help?", "",
           "A server part G shared by every task, client parts H_m of their own: in which "
           "regimes does MTSL beat each client learning alone (local-only), federated "
           "averaging (FedAvg), and a personalised FL method (FedRep)? The map runs over "
           "train examples per client x number of clients x where the model is cut, under "
           "two kinds of heterogeneity (Dirichlet(0.3) label skew; each client's own label "
           "permutation), with ablations that remove one ingredient of the shared part at a "
           "time. Design: `mtsl_jax/server_map/grid.py`.", "",
           f"Every number below is computed from `{results.as_posix()}` by `{REGENERATE}`; "
           "the records come from `python launch/server_map.py --profile=cpu "
           "--tfds_data_dir=DIR` (resumable: a finished run is never trained again).", ""]
  lines += _answer(maps, diffs, ablations)
  lines += _heatmaps(maps, diffs, figures, doc_dir)
  lines += _provenance(recs, summ) if recs else ["## What ran", "", "Nothing yet.", ""]
  lines += _accuracy_tables(maps)
  lines += _difference_tables(maps, diffs)
  lines += _ablation_table(ablations)
  if recs:
    lines += _cuts(summ)
    lines += _tuning(recs, figures, doc_dir)
  lines += ["## Threats to validity", "",
            "- One learning-rate point per method for the whole map, tuned at one regime: a "
            "method whose best rate moves with the data per client (e.g. local-only with 25 "
            "examples) is handicapped in the cells far from the tuning regime.",
            "- The full map's model is an MLP; on an MLP the input layer holds most "
            "parameters, so the cuts with a small client part put the head, not the input "
            "layers, on the client (the 'top' orientation sends raw inputs to the server). "
            "The CNN slice (profile cpu_cnn: MNIST, Dirichlet 0.3, 10 clients, 100 or all "
            "examples; its map and table where recorded) adds a server-heavy 'bottom' cut "
            "whose client part is the first convolution block (~0.2% of the parameters).",
            "- Final accuracy at a fixed budget; cells marked † had not plateaued.",
            "- The best of local-only and FedAvg is chosen per cell after seeing the results, "
            "which favours the baseline.", ""]
  text = "\n".join(lines).rstrip() + "\n"
  document.parent.mkdir(parents=True, exist_ok=True)
  document.write_text(text, encoding="utf-8")
