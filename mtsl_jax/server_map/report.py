"""docs/when_mtsl_helps.md and its figures, generated from the server map's records alone.

`write_report(results, document)` reads the JSONL of run records (`runner.KEY_FIELDS`),
computes every number with `analysis`, draws the figures under
`<document dir>/figures/server_map/`, and writes the markdown: the answer in words
(`answer`: which cuts help, counts of cells where MTSL wins, ties and loses, and what the
ablations support), the
difference heatmaps with the significant cells marked, every cell's verdict with its
interval, the ablation table, the cuts, the tuned points, and what is reduced. Partial
records give a partial document that says what is missing. The output depends on the
records only (sorted orders, no dates): writing it twice gives the same files.
"""

import collections
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from mtsl_jax.comparison import records, v2_analysis, v2_report
from mtsl_jax.comparison import report_format as fmt
from mtsl_jax.server_map import analysis, answer, grid, runner
# pylint: enable=wrong-import-position

REGENERATE = "python launch/server_map.py --phases=report"
_MARK = {"holds": "▲", "fails": "▼", "not significant": ""}


def _axes(regimes: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
  """The examples levels (columns, 'all' last) and client counts (rows) of a map."""
  examples = sorted({e for e, _ in regimes}, key=lambda e: (e == 0, e))
  clients = sorted({m for _, m in regimes})
  return examples, clients


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
    ax.set_xticks(range(len(examples)), [answer.examples_label(e) for e in examples], fontsize=7)
    ax.set_yticks(range(len(clients)), [str(m) for m in clients], fontsize=7)
    ax.set_xlabel("train examples per client", fontsize=8)
    ax.set_ylabel("clients", fontsize=8)
    ax.set_title(mtsl, fontsize=9)
  fig.colorbar(image, ax=axes[0].tolist(), label="accuracy difference (points)")
  fig.suptitle(f"{answer.map_label(map_key)}: MTSL minus {comparison}; ▲/▼ significant (paired, "
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
        lines += [f"![{answer.map_label(map_key)}: MTSL minus {comparison}]"
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
    lines += [f"### {answer.map_label(map_key)}", "",
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
      lines.append(f"| {regime[1]} | {answer.examples_label(regime[0])} | "
                   f"{'—' if n is None else f'{n:.0f}'} | " + " | ".join(values) + " |")
    lines.append("")
  return lines


def _difference_tables(maps: dict, diffs: dict) -> list[str]:
  lines = ["## Every cell's verdict", "",
           "MTSL minus the comparison, accuracy points: verdict, mean [95% interval], p, "
           "seeds (and, against the best of local-only and FedAvg, which of the two it was); "
           "'rising' names a side with some seed not plateaued at the end of its budget, "
           "and 'budget-bound' a verdict that goes against a rising side.", ""]
  for map_key in sorted(maps):
    for comparison in analysis.VERSUS:
      rows = [m for m in analysis.MTSL_ROWS if (*map_key, m, comparison) in diffs]
      if not rows:
        continue
      lines += [f"### {answer.map_label(map_key)}: MTSL minus {comparison}", "",
                "| clients | examples | " + " | ".join(rows) + " |",
                "|---|---|" + "---|" * len(rows)]
      for regime in sorted(maps[map_key], key=lambda r: (r[1], r[0] == 0, r[0])):
        cells = []
        for m in rows:
          c = diffs[(*map_key, m, comparison)].get(regime)
          text = fmt.verdict_text(c, "not run")
          if c is not None and len(analysis.VERSUS[comparison]) > 1:
            text += f" ({c['baseline']})"
          if c is not None and c["rising"]:
            text += f"; rising: {', '.join(c['rising'])}"
            text += "; budget-bound" if c["budget_bound"] else ""
          cells.append(text)
        lines.append(f"| {regime[1]} | {answer.examples_label(regime[0])} | " + " | ".join(cells)
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
    lines.append(f"| {answer.map_label(key[:3])} | {answer.regime_text(key[3:5])} | {key[5]} | "
                 + " | ".join(_ablation_cell(n, row.get(n)) for n in names) + " |")
  return lines + [""]


def _ablation_cell(ablation: str, comparison: dict | None) -> str:
  """The paired verdict, and the ablated seeds that diverged (left out of the test: a
  loss the test itself cannot show); an ablation that changed nothing says so."""
  if comparison and comparison.get("identical"):
    why = answer.IDENTICAL_WHY.get(ablation, "")
    return f"no change: the MTSL row's run{why} n={comparison['n']}"
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


def _rates_text(summary: dict) -> str:
  """A cell's (server / client) rates, e.g. '0.316 / 1' ('—' for no server rate)."""
  return "; ".join(f"{'—' if sr is None else f'{sr:.3g}'} / {cr:.3g}"
                   for sr, cr in summary["rates"])


def _tuning_check(recs: Sequence[dict], check: dict) -> list[str]:
  """The section on tuning once: each method's rates and accuracy tuned once and tuned
  at the cell, and the verdicts under both."""
  lines = ["## Tuned once or at the cell?", "",
           "The map tunes each method once per dataset, at its profile's tuning regime, and "
           "reuses that point in every cell. At the cells below every method the verdicts "
           "compare was tuned again at the cell itself (same grids and edge rule, on the "
           "cell's validation split, seed 0) and trained with the map's seeds; a verdict "
           "that changes here rests on the tuned-once rates.", ""]
  if not check["verdicts"]:
    return lines + ["Not run yet (`python launch/server_map.py --profile=cpu "
                    "--phases=retune`).", ""]
  same = [v for v in check["verdicts"].values() if v["same"]]
  changed = [f"{answer.map_label(k[:3])}, {answer.regime_text(k[5])}, {k[3]} vs {k[4]}: "
             f"{v['once']['verdict']} -> {v['cell']['verdict']}"
             for k, v in sorted(check["verdicts"].items(), key=repr) if not v["same"]]
  moved = collections.Counter(v["change"]["verdict"] for v in check["methods"].values())
  held = sorted({(k[:3], k[3:5]) for k in check["methods"]}, key=repr)
  validation = "; ".join(dict.fromkeys(  # one entry per distinct text (maps share cells)
      f"{answer.regime_text(regime)}: about {_validation_size(check, key, regime)}"
      for key, regime in held))
  lines += [f"**{len(same)} of {len(check['verdicts'])} verdicts are the same with "
            "cell-tuned rates**" + (": none changed." if not changed else
                                    "; changed: " + "; ".join(changed) + "."), "",
            f"Tuned at the cell, a method's test accuracy rose significantly in "
            f"{moved['holds']} of {len(check['methods'])} cases, fell in {moved['fails']} and "
            f"did not change significantly in {moved['not significant']}: a cell's own "
            "tuning is not better by construction, because it chooses on that cell's "
            f"validation split, small where data are few (validation examples over all "
            f"clients, {validation}).", "",
            "| map | cell | method | tuned once: server / client rate, accuracy % | tuned at "
            "the cell: rates, accuracy %, interior | cell-tuned minus tuned-once |",
            "|---|---|---|---|---|---|"]
  for k, v in sorted(check["methods"].items(),
                     key=lambda kv: (kv[0][:5], list(grid.METHODS).index(kv[0][5]))):
    point = runner.cell_tuned_point(recs, k[0], k[1], k[5], k[3], k[4])
    interior = "yes" if point is not None and not point["edges"] else "NO"
    lines.append(f"| {answer.map_label(k[:3])} | {answer.regime_text(k[3:5])} | {k[5]} | "
                 f"{_rates_text(v['once'])}, "
                 f"{fmt.interval_with_std(v['once']['accuracy'], 100)} | "
                 f"{_rates_text(v['cell'])}, "
                 f"{fmt.interval_with_std(v['cell']['accuracy'], 100)}, {interior} | "
                 f"{fmt.verdict_text(v['change'], '—')} |")
  lines += ["", "| map | cell | MTSL row | vs best of local and FedAvg: once -> at the cell | "
            "vs FedRep: once -> at the cell |", "|---|---|---|---|---|"]
  rows = sorted({(k[:3], k[5], k[3]) for k in check["verdicts"]},
                key=lambda r: (r[:2], analysis.MTSL_ROWS.index(r[2])))
  for map_key, regime, mtsl in rows:
    texts = []
    for name in analysis.VERSUS:
      v = check["verdicts"].get((*map_key, mtsl, name, regime))
      if v is None:
        texts.append("—")
        continue
      texts.append(" -> ".join(f"{c['verdict']} {100 * c['mean']:+.1f}"
                               + (f" ({c['baseline']})" if len(analysis.VERSUS[name]) > 1
                                  else "") for c in (v["once"], v["cell"]))
                   + ("" if v["same"] else " **changed**"))
    lines.append(f"| {answer.map_label(map_key)} | {answer.regime_text(regime)} | {mtsl} | "
                 + " | ".join(texts) + " |")
  return lines + [""]


def _validation_size(check: dict, map_key: tuple, regime: tuple[int, int]) -> int:
  """Validation examples over all clients of a cell's tuning runs (the fraction of each
  client's train examples the tuning holds out)."""
  held = [analysis.mean_train_examples({"m": v["once"]}) for k, v in check["methods"].items()
          if (k[:3], k[3:5]) == (map_key, regime)]
  held = [n for n in held if n is not None]
  return round(grid.VALIDATION_FRACTION * (held[0] if held else regime[0]) * regime[1])


def _tuned_once_threat(check: dict) -> str:
  """The threat of tuning once, with what the check found."""
  text = ("- One learning-rate point per method for the whole map, tuned at one regime: a "
          "method whose best rate moves with the data per client (e.g. local-only with 25 "
          "examples) is handicapped in the cells far from the tuning regime.")
  verdicts = check["verdicts"]
  if not verdicts:
    return text + " Not checked yet."
  cells = len({(k[:3], k[5]) for k in verdicts})
  return (text + f" Checked in {cells} map cell{'s' if cells > 1 else ''} by tuning every "
          "method there again "
          f"(section 'Tuned once or at the cell?'): {sum(v['same'] for v in verdicts.values())} "
          f"of {len(verdicts)} verdicts unchanged.")


def _seeds_text(profile: str, counts: dict[int, int]) -> str:
  """A profile's seeds per cell in words, against the full study's and its own target.

  E.g. 'seeds per cell: 5 in 120, 3 in 344 (the full study: 5; the profile runs 5:
  `python launch/server_map.py --profile=cpu` resumes the rest)'.
  """
  ordered = sorted(counts.items(), reverse=True)
  if len(ordered) == 1:
    text = f"seeds per cell: {ordered[0][0]} in all {ordered[0][1]}"
  else:
    text = "seeds per cell: " + ", ".join(f"{n} in {c}" for n, c in ordered)
  notes = []
  fewest, full = ordered[-1][0], len(grid.PROFILES["full"].seeds)
  if fewest < full:
    notes.append(f"the full study: {full}")
  target = len(grid.PROFILES[profile].seeds) if profile in grid.PROFILES else fewest
  if fewest < target:
    notes.append(f"the profile runs {target}: `python launch/server_map.py "
                 f"--profile={profile}` resumes the rest")
  return text + (f" ({'; '.join(notes)})" if notes else "")


def _provenance(recs: Sequence[dict], summ: dict) -> list[str]:
  runs = [r for s in summ.values() for r in s["runs"]]
  tuning = len({runner.key(r) for r in recs if r["phase"] == "tune"})
  machines = sorted({v2_analysis.machine(r.get("where")) for r in recs})
  reductions = {}  # profile -> its seeds, then its map runs' other reductions, in order
  for profile, counts in sorted(analysis.seeds_per_cell(summ).items()):
    reductions[profile] = {_seeds_text(profile, counts): None}
  for r in runs:
    reductions[r["profile"]].update(dict.fromkeys(
        x for x in r.get("reductions") or [] if not grid.states_seed_count(x)))
  plateaued = sum(1 for s in summ.values() if s["all_plateaued"])
  check = {phase: len({runner.key(r) for r in recs if r["phase"] == phase})
           for phase in ("tune_cell", "retuned")}
  check_text = (f" The tuned-once check: {check['tune_cell']} tuning runs at its cells and "
                f"{check['retuned']} runs at the points they chose." if any(check.values())
                else "")
  return ["## What ran", "",
          f"{tuning} tuning runs and {len(runs)} map and ablation runs in {len(summ)} "
          f"cells (each run counted once), of which {plateaued} "
          f"reached a plateau in every seed.{check_text}", "",
          "Computed on: " + "; ".join(machines) + ".", "",
          "Seeds per cell (counted from the records) and the reductions against the full "
          "study, per profile (every record names its own):",
          "", *[f"- {profile}: " + "; ".join(items) for profile, items in
                sorted(reductions.items())], "",
          "Budgets are client steps of 32 examples per client; FedAvg and FedRep take 5 "
          "local steps per round (FedRep: 5 head steps, then 5 body steps), so every method "
          "gets the same client steps. Examples per client caps each client's train "
          "examples (a uniform subset); 'all' keeps the partition's. A cap is run only "
          "where cap x clients fits in the 60,000 train examples, so 'all' stands for the "
          "larger caps at 50 and 200 clients.", ""]


def _budget_bound_text(diffs: dict) -> str:
  """How many verdicts of each comparison more training could change, in words."""
  parts = []
  for name in analysis.VERSUS:
    found = [c for k, d in diffs.items() if k[4] == name for c in d.values()]
    if found:
      parts.append(f"{sum(c['budget_bound'] for c in found)} of the {len(found)} verdicts "
                   f"against {'the ' if len(analysis.VERSUS[name]) > 1 else ''}{name}")
  if not parts:
    return ""
  return ("Budget-bound (the side a verdict goes against was still rising, so more "
          "training could change it): " + "; ".join(parts) + ".")


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
  lines += answer.answer(maps, diffs, ablations)
  lines += _heatmaps(maps, diffs, figures, doc_dir)
  lines += _provenance(recs, summ) if recs else ["## What ran", "", "Nothing yet.", ""]
  lines += _accuracy_tables(maps)
  lines += _difference_tables(maps, diffs)
  lines += _ablation_table(ablations)
  if recs:
    lines += _cuts(summ)
    lines += _tuning(recs, figures, doc_dir)
  check = analysis.tuning_check(summ, analysis.summaries(recs, retuned=True))
  if recs:
    lines += _tuning_check(recs, check)
  lines += ["## Threats to validity", "",
            _tuned_once_threat(check),
            "- The full map's model is an MLP; on an MLP the input layer holds most "
            "parameters, so the cuts with a small client part put the head, not the input "
            "layers, on the client (the 'top' orientation sends raw inputs to the server). "
            "The CNN slice (profile cpu_cnn: MNIST, Dirichlet 0.3, 10 clients, 100 or all "
            "examples; its map and table where recorded) adds a server-heavy 'bottom' cut "
            "whose client part is the first convolution block (~0.2% of the parameters).",
            "- Final accuracy at a fixed budget; cells marked † had not plateaued. "
            + _budget_bound_text(diffs),
            "- The best of local-only and FedAvg is chosen per cell after seeing the results, "
            "which favours the baseline.", ""]
  text = "\n".join(lines).rstrip() + "\n"
  document.parent.mkdir(parents=True, exist_ok=True)
  document.write_text(text, encoding="utf-8")
