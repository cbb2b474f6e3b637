"""results/REPORT.md and its figures, generated from the run records alone.

`write_report(results, report)` reads the JSONL of run records, computes every table with
`analysis`, draws the figures next to the report (`<report dir>/figures/`), and writes the
markdown: setup (data, budget, learning-rate grid and choices, target definition), the
paper's claims with a verdict each, then the tables and figures they rest on. Every table
names the command that regenerates it.
"""

import collections
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mtsl_jax.comparison import analysis, grid, records  # pylint: disable=wrong-import-position

REGENERATE = "python launch/reproduce.py --phases=report"


def _fmt_acc(stats) -> str:
  return "diverged" if stats is None else f"{stats[0]:.3f} ± {stats[1]:.3f}"


def _fmt_lr(summary: dict) -> str:
  """The tuned rate, and the fallback rate(s) of seeds that diverged at it."""
  text = f"{summary['lr']:g}"
  if summary["fallback_seeds"]:
    text += (f" ({summary['fallback_seeds']} seed(s) diverged, rerun at "
             f"{', '.join(f'{x:g}' for x in summary['fallback_lrs'])})")
  return text


def _fmt_mb(value) -> str:
  return "—" if value is None else f"{value / 1e6:,.1f}"


def _methods(summaries_by_cell: dict) -> list[str]:
  present = {m for s in summaries_by_cell.values() for m in s}
  return [m for m in grid.METHODS if m in present]


def _setting_label(setting: str, noise) -> str:
  return setting if noise is None else f"{setting}, {noise[0]}={noise[1]:g}"


def _accuracy_tables(main: dict, key: str, title: str) -> list[str]:
  """One table per dataset: methods x settings, seed mean ± std; the best per column bold."""
  lines = [f"### {title}", "", f"Regenerate: `{REGENERATE}`. †: some seeds diverged at the "
           "tuned rate and count with a rerun at the next smaller rate of the grid (see the "
           "lr column of the steps-to-target tables).", ""]
  by_dataset = collections.defaultdict(dict)
  for (dataset, setting, _), summaries in main.items():
    by_dataset[dataset][setting] = summaries
  for dataset, settings in by_dataset.items():
    order = [s for s in grid.DATASETS[dataset].settings if s in settings]
    methods = _methods(settings)
    lines += [f"**{dataset}**", "", "| method | " + " | ".join(order) + " |",
              "|---" * (len(order) + 1) + "|"]
    best = {s: max((settings[s][m][key][0] for m in settings[s] if settings[s][m][key]),
                   default=None) for s in order}
    for m in methods:
      cells = []
      for s in order:
        summary = settings[s].get(m)
        stats = summary[key] if summary else None
        text = "—" if summary is None else _fmt_acc(stats)
        if summary and summary["fallback_seeds"]:
          text += " †"
        if stats and best[s] is not None and stats[0] == best[s]:
          text = f"**{text}**"
        cells.append(text)
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
  return lines


def _efficiency_tables(main: dict) -> list[str]:
  lines = ["### Client steps and bytes to the target accuracy", "",
           f"Target: {analysis.TARGET_FRACTION:g} x the best method's final mean accuracy "
           "in the setting, rounded down to 0.01. Steps are client steps (batches of "
           f"{grid.BATCH_SIZE} examples per client) at the first of the {grid.EVALS} "
           "evaluation points that reaches the target; medians over the seeds that reached "
           "it (k/n). MB: uplink + downlink bytes of all clients by then. Wall: seconds for "
           "the whole vmapped seed group, compile included. "
           f"Regenerate: `{REGENERATE}`.", ""]
  for (dataset, setting, noise), summaries in main.items():
    target = next(iter(summaries.values()))["target"]
    lines += [f"**{dataset} / {_setting_label(setting, noise)}** (target {target})", "",
              "| method | lr | steps to target | MB to target | reached | wall s |",
              "|---|---|---|---|---|---|"]
    for m in _methods({0: summaries}):
      s, t = summaries[m], summaries[m]["to_target"]
      steps = "—" if t is None or t["steps"] is None else f"{t['steps']:.0f}"
      mb = analysis.NO_TRAFFIC.get(m) or ("—" if t is None else _fmt_mb(t["bytes"]))
      reached = "—" if t is None else f"{t['reached']}/{t['of']}"
      lines.append(f"| {m} | {_fmt_lr(s)} | {steps} | {mb} | {reached} | "
                   f"{s['wall_group']:.0f} |")
    lines.append("")
  return lines


def _per_method(rows: list[dict], field: str, first: Sequence[str], fmt) -> list[str]:
  """A markdown table: the `first` columns of each row, then one column per method of
  `row[field]` (a method -> value dict), formatted by `fmt` ('—' for None)."""
  methods = [m for m in grid.METHODS if any(m in r[field] for r in rows)]
  lines = ["| " + " | ".join(list(first) + methods) + " |",
           "|---" * (len(first) + len(methods)) + "|"]
  for r in rows:
    cells = [f"{r[c]:g}" if isinstance(r[c], float) else str(r[c]) for c in first]
    cells += ["—" if r[field].get(m) is None else fmt(r[field][m]) for m in methods]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _verdict(rows: list[dict], field: str = "holds") -> str:
  judged = [r for r in rows if r[field] is not None]
  held = sum(bool(r[field]) for r in judged)
  return f"holds in {held} of {len(judged)} settings"


def _claims(all_records: Sequence[dict], main: dict) -> list[str]:
  acc = analysis.accuracy_claim(main)
  steps = analysis.efficiency_claim(main, "steps")
  sent = analysis.efficiency_claim(main, "bytes")
  het = analysis.heterogeneity_claim(main)
  noise = analysis.noise_claim(all_records)
  lines = ["## The paper's claims, checked", "",
           f"MTSL here is `{analysis.MTSL_PRIMARY}` (chosen before any result was seen; the "
           "other orientations are in the tables); the paper's baselines are "
           f"{', '.join(analysis.PAPER_BASELINES)}. A claim *holds in a setting* when MTSL "
           "beats every one of them there (seed means).", "",
           "| claim | verdict |", "|---|---|",
           f"| higher multi-task accuracy | {_verdict(acc)} |",
           f"| fewer training steps to the target | {_verdict(steps)} |",
           f"| less data transmitted to the target | {_verdict(sent)} |",
           f"| more robust to heterogeneity (accuracy change from iid no worse) | "
           f"{_verdict(het)} |",
           f"| more robust to noise: accuracy drop no larger | {_verdict(noise)} |",
           f"| more robust to noise: higher accuracy under noise | "
           f"{_verdict(noise, 'holds_accuracy')} |",
           f"| (not a paper claim) higher accuracy than local-only training, i.e. the shared "
           f"server part helps | {_verdict(analysis.accuracy_claim(main, ('local',)))} |",
           "", "Noise settings count each (kind, level) once. The local-only row holds MTSL "
           "against `local` alone.", ""]
  if acc:
    lines += ["Accuracy margin of MTSL over the best paper baseline, per setting "
              "(points of mean per-task accuracy):", "",
              "| dataset | setting | MTSL | best baseline | margin |", "|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {r['setting']} | {r['mtsl']:.3f} | {r['baseline']} "
              f"{r['best_baseline']:.3f} | {100 * r['margin']:+.1f} |" for r in acc]
    lines.append("")
  for name, rows, unit in (("steps", steps, "client steps"), ("bytes", sent, "MB")):
    if not rows:
      continue
    lines += [f"To target, {unit} (MTSL vs the best paper baseline that reached it):", "",
              "| dataset | setting | target | MTSL | best baseline | holds |",
              "|---|---|---|---|---|---|"]
    for r in rows:
      conv = (lambda v: "not reached" if v is None else f"{v:.0f}") if name == "steps" else (
          lambda v: "not reached" if v is None else _fmt_mb(v))
      base = "none reached" if r["baseline"] is None else (
          f"{r['baseline']} {conv(r['best_baseline'])}")
      lines.append(f"| {r['dataset']} | {r['setting']} | {r['target']} | {conv(r['mtsl'])} | "
                   f"{base} | {'yes' if r['holds'] else 'no'} |")
    lines.append("")
  if het:
    lines += ["Accuracy change from iid (points), per method. Read with care: label skew "
              "also makes each client's task easier (fewer classes to tell apart), so "
              "methods with personal parts can gain from it; per-task accuracy is not "
              "comparable across settings as a difficulty-free measure.", ""]
    lines += _per_method(het, "changes", ("dataset", "setting"), lambda v: f"{100 * v:+.1f}")
    lines.append("")
  if noise:
    lines += [f"### Robustness to noise ({noise[0]['dataset']}, {noise[0]['setting']})", "",
              "Mean per-task test accuracy (seed mean) with every client's data noised; "
              f"level 0 is the main run. Regenerate: `{REGENERATE}`.", ""]
    lines += _per_method(noise, "accuracy", ("kind", "level"), lambda v: f"{v:.3f}")
    lines.append("")
  return lines


def _setup(all_records: Sequence[dict]) -> list[str]:
  datasets = list(dict.fromkeys(r["dataset"] for r in all_records))
  lines = ["## Setup", "",
           f"- {grid.NUM_CLIENTS} clients, batch {grid.BATCH_SIZE} per client, SGD; "
           f"{grid.VALIDATION_FRACTION:g} of every client's train examples held out as a "
           "validation split in every run (tuning evaluates on it, final runs on the test set).",
           "- Budget: every method processes the same number of examples per client "
           "(client steps x batch; a federated round of K local steps counts K, FedRep's "
           f"round its head steps too; K = {grid.LOCAL_STEPS}). Seeds "
           f"{sorted({r['seed'] for r in all_records if r['phase'] != 'tune'})}, "
           "trained as one vmapped program per cell.",
           f"- Learning rate: grid {list(grid.LR_GRID)} for every method (both sides of the "
           "split methods; the clients of the federated methods, whose server step is plain "
           "averaging), tuned per dataset and method on the validation split of the tuning "
           "setting, seed 0.", "",
           "| dataset | data | model | setting for tuning | budget (client steps) |",
           "|---|---|---|---|---|"]
  for d in datasets:
    spec = grid.DATASETS[d]
    budget = sorted({r["budget_client_steps"] for r in all_records if r["dataset"] == d})
    model = "MLP " + "-".join(map(str, spec.model.get("hidden_sizes", ()))) \
        if spec.model["name"] == "mlp" else spec.model["name"].upper()
    lines.append(f"| {d} | {spec.note} | {model} | {spec.tune_setting} | "
                 f"{', '.join(map(str, budget))} |")
  missing = [d for d in grid.DATASETS if d not in datasets and grid.DATASETS[d].where != "check"]
  if missing:
    lines += ["", "Defined in the grid but not in these records: " + "; ".join(
        f"{d} ({grid.DATASETS[d].note}; runs on a {grid.DATASETS[d].where.upper()}: "
        f"`python launch/reproduce.py --datasets={d} --noise_dataset= --tfds_data_dir=...`)"
        for d in missing) + "."]
  loads = [r["load_1min"] for r in all_records if "load_1min" in r]
  machines = sorted({f"{r['device']}, {r['cpus']} CPUs" for r in all_records if "device" in r})
  if machines:
    total = sum(r["wall_seconds_group"] / r["seeds_in_group"] for r in all_records)
    lines += ["", f"Machine: {'; '.join(machines)}. All runs of these records took "
              f"{total / 60:.0f} min of wall time (compilation included). Wall times are as "
              f"measured: the 1-minute load average when a cell started was "
              f"{np.median(loads):.1f} (median; {min(loads):.1f} to {max(loads):.1f}), so "
              "they compare methods only roughly."]
  tuning = analysis.tuning_table(all_records)
  if tuning:
    lines += ["", "Validation accuracy per learning rate (the chosen one bold):", "",
              "| dataset | method | " + " | ".join(f"lr {lr:g}" for lr in grid.LR_GRID) + " |",
              "|---" * (len(grid.LR_GRID) + 2) + "|"]
    chosen = analysis.tuned_learning_rates(all_records)
    for (dataset, method), by_lr in tuning.items():
      vals = []
      for lr in grid.LR_GRID:
        v = by_lr.get(lr, "missing")
        text = "diverged" if v is None else ("—" if v == "missing" else f"{v:.3f}")
        vals.append(f"**{text}**" if lr == chosen[(dataset, method)] else text)
      lines.append(f"| {dataset} | {method} | " + " | ".join(vals) + " |")
    edge = sorted(f"{d}/{m}" for (d, m), lr in chosen.items() if lr == max(grid.LR_GRID))
    if edge:
      lines += ["", f"The largest rate of the grid won for {len(edge)} of {len(chosen)} "
                f"(dataset, method) pairs ({', '.join(edge)}): a larger one might do better "
                "for them; the grid is the same for every method."]
  return lines + [""]


def _plot_curves(main: dict, out_dir: pathlib.Path, x: str) -> list[pathlib.Path]:
  """Per dataset: one panel per setting, seed-mean accuracy against client steps or MB."""
  paths = []
  by_dataset = collections.defaultdict(dict)
  for (dataset, setting, _), summaries in main.items():
    by_dataset[dataset][setting] = summaries
  for dataset, settings in by_dataset.items():
    order = [s for s in grid.DATASETS[dataset].settings if s in settings]
    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3), squeeze=False,
                             sharey=True)
    for ax, setting in zip(axes[0], order):
      for method in grid.METHODS:
        s = settings[setting].get(method)
        if not s or not s["curves"] or (x == "bytes" and method in analysis.NO_TRAFFIC):
          continue
        xs = np.asarray(s["curves"][0]["client_steps" if x == "steps" else "bytes"])
        ys = np.mean([c["accuracy_mean"] for c in s["curves"]], axis=0)
        ax.plot(xs if x == "steps" else xs / 1e6, ys, label=method,
                ls="-" if method.startswith("mtsl") else "--")
      ax.set_title(setting, fontsize=9)
      ax.set_xlabel("client steps" if x == "steps" else "MB (up + down)")
      if x == "bytes":
        ax.set_xscale("log")
    axes[0][0].set_ylabel("mean per-task test accuracy")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path = out_dir / f"{dataset.replace('+', '_')}_accuracy_vs_{x}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    paths.append(path)
  return paths


def _plot_noise(all_records: Sequence[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
  rows = analysis.noise_claim(all_records)
  if not rows:
    return []
  kinds = list(dict.fromkeys(r["kind"] for r in rows))
  fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.2), squeeze=False)
  main = analysis.table(all_records, "main")
  for ax, kind in zip(axes[0], kinds):
    kind_rows = [r for r in rows if r["kind"] == kind]
    clean = main.get((kind_rows[0]["dataset"], kind_rows[0]["setting"], None), {})
    for method in grid.METHODS:
      pts = [(0.0, clean[method]["acc"][0])] if clean.get(method, {}).get("acc") else []
      pts += [(r["level"], r["accuracy"][method]) for r in kind_rows
              if r["accuracy"].get(method) is not None]
      if pts:
        ax.plot(*zip(*pts), marker="o", label=method,
                ls="-" if method.startswith("mtsl") else "--")
    ax.set_xlabel(kind)
    ax.set_ylabel("mean per-task test accuracy")
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  path = out_dir / "robustness_noise.png"
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return [path]


def write_report(results: pathlib.Path, report: pathlib.Path) -> None:
  """Writes `report` (markdown) and `<report dir>/figures/*.png` from the records.

  Args:
    results: the JSONL of run records.
    report: the markdown file to write.
  """
  all_records = records.ResultsFile(results).load()
  main = analysis.table(all_records, "main")
  figures = report.parent / "figures"
  figures.mkdir(parents=True, exist_ok=True)
  lines = ["# Reproducing the MTSL comparison (Zheng & Eryilmaz, arXiv 2406.00150)", "",
           f"Generated from `{results}` ({len(all_records)} run records) by `{REGENERATE}`. "
           "Rerun every experiment: `python launch/reproduce.py --tfds_data_dir=<TFDS dir>` "
           "(finished runs are skipped).", "",
           "**This is version 1.** Its protocol ties the server and client learning rates, "
           "cuts an MLP with most parameters on the clients, and reports population stds of "
           "3 seeds without tests; it cannot settle the paper's claims. Version 2 (CNN "
           "server-heavy cuts, 2-D rate tuning, paired tests over seeds, link-model "
           "wall-clock) is [results/v2/REPORT.md](v2/REPORT.md).", ""]
  lines += _setup(all_records)
  lines += _claims(all_records, main)
  lines += ["## Results", ""]
  lines += _accuracy_tables(main, "acc", "Mean per-task test accuracy (± std over seeds)")
  lines += _accuracy_tables(main, "worst", "Worst-task test accuracy (± std over seeds)")
  lines += _efficiency_tables(main)
  plots = (_plot_curves(main, figures, "steps") + _plot_curves(main, figures, "bytes")
           + _plot_noise(all_records, figures))
  lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in plots] + [""]
  report.write_text("\n".join(lines), encoding="utf-8")
