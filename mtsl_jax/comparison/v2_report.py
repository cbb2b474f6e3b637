"""results/v2/REPORT.md and its figures, generated from the comparison v2's records alone.

`write_report(results, report)` reads the JSONL of run records (`v2_records`), computes
every number with `v2_analysis`, draws the figures under `<report dir>/figures/`, and
writes the markdown. Its first screen is the verdict of every claim (MTSL row against a
baseline, per setting) and the tuning grids the verdicts rest on; then where and under
which reductions the runs were computed, the cuts, accuracy, costs to target, curves, and
the threats to validity. Partial records give a partial report: what was not run says
so. The output depends on the records only (sorted orders, no dates), so writing it
twice gives the same files.
"""

import math
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mtsl_jax.comparison import report_format as fmt  # pylint: disable=wrong-import-position
from mtsl_jax.comparison import (  # pylint: disable=wrong-import-position
    link_model, records, statistics, v2_analysis, v2_records,
)

REGENERATE = "python launch/compare_v2.py --phases=report"
_NOT_RUN = "not run yet"


def _label(setting: tuple, many_profiles: bool) -> str:
  """'dataset / setting' (+ noise), prefixed by the profile when several are reported."""
  profile, dataset, name, noise = setting
  text = f"{dataset} / {name}" + (f" + {noise}" if noise else "")
  return f"{profile}: {text}" if many_profiles else text


class _Plan:
  """The settings and methods to report: the record profiles' plans, then what is there."""

  def __init__(self, recs: Sequence[dict], summ: dict):
    self.profiles = sorted({r["profile"] for r in recs})
    self.settings, self.methods = [], {}
    for profile in self.profiles:
      settings, methods = v2_analysis.planned(profile)
      self.settings += settings
      self.methods[profile] = list(methods)
    seen = sorted({k[:4] for k in summ}, key=repr)
    self.settings += [s for s in seen if s not in self.settings]
    for key in summ:
      self.methods.setdefault(key[0], [])
      if key[4] not in self.methods[key[0]]:
        self.methods[key[0]].append(key[4])
    self.methods = {p: v2_analysis.method_order(m) for p, m in self.methods.items()}
    self.many = len(self.profiles) > 1

  def label(self, setting: tuple) -> str:
    return _label(setting, self.many)


def _verdict_table(plan: _Plan, summ: dict) -> list[str]:
  claims = v2_analysis.claims(summ)
  planned = {m for ms in plan.methods.values() for m in ms}
  rows = [(a, b) for a in v2_analysis.MTSL_ROWS for b in v2_analysis.BASELINES
          if a in planned and b in planned]
  lines = ["## Verdicts", "",
           'Each claim reads "<MTSL row> reaches a higher final mean per-task test accuracy '
           'than <baseline>". Cell: the verdict of a paired t-test over the seeds both '
           "methods finished ('holds': the 95% interval of the mean per-seed difference lies "
           "above zero, 'fails': below, else 'not significant'), the mean difference in "
           "accuracy points with its 95% interval, the two-sided p and the number of seeds n. "
           "Fewer than 2 common seeds: 'not significant' (n < 2).", ""]
  if not rows or not plan.settings:
    return lines + ["No main records yet: no claim can be judged.", ""]
  lines += ["| claim | " + " | ".join(plan.label(s) for s in plan.settings) + " |",
            "|---" * (len(plan.settings) + 1) + "|"]
  for a, b in rows:
    cells = []
    for s in plan.settings:
      absent = [m for m in (a, b) if s + (m,) not in summ]
      cells.append(fmt.verdict_text(claims.get((a, b), {}).get(s),
                                 f"{' and '.join(absent)} {_NOT_RUN}"))
    lines.append(f"| {a} > {b} | " + " | ".join(cells) + " |")
  # In words: how many judged claims hold, and which do not hold (fail).
  judged = [(a, b, s, claims[(a, b)][s]) for a, b in rows for s in plan.settings
            if claims.get((a, b), {}).get(s) is not None]
  tally = {v: sum(c["verdict"] == v for *_, c in judged) for v in statistics.VERDICTS}
  failed = [f"{a} > {b} ({plan.label(s)})" for a, b, s, c in judged if c["verdict"] == "fails"]
  lines += ["", f"Of {len(judged)} judged claims: {tally['holds']} hold, "
            f"{tally['not significant']} are not significant, {tally['fails']} fail"
            + (f"; the claims that fail (the baseline is significantly better): "
               f"{'; '.join(failed)}." if failed else ".")]
  return lines + [""]


def _ticks(ax, axis: str, values: Sequence, most: int = 7) -> None:
  """Index ticks labelled log10(rate), at most `most` of them."""
  step = max(1, math.ceil(len(values) / most))
  idx = list(range(0, len(values), step))
  labels = ["—" if values[i] is None else f"{math.log10(values[i]):.2f}" for i in idx]
  (ax.set_xticks if axis == "x" else ax.set_yticks)(idx, labels, fontsize=7)


def plot_tuning(grids: dict, profile: str, dataset: str, out: pathlib.Path) -> pathlib.Path:
  """A subplot per method: score over log10 server x log10 client rate; x diverged, o chosen."""
  methods = [(k[2], g) for k, g in grids.items() if k[:2] == (profile, dataset)]
  finite = [v for _, g in methods for row in g["scores"] for v in row if v is not None]
  vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
  cols = min(4, len(methods))
  rows = math.ceil(len(methods) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False,
                           layout="constrained")
  image = None
  for ax, (method, g) in zip(axes.ravel(), methods):
    matrix = np.array([[np.nan if v is None else v for v in row] for row in g["scores"]])
    image = ax.imshow(matrix, origin="lower", aspect="auto", cmap="viridis", vmin=vmin,
                      vmax=vmax)
    for i, row in enumerate(g["ran"]):
      for j, ran in enumerate(row):
        if ran and g["scores"][i][j] is None:
          ax.plot(j, i, "x", color="red", ms=7, mew=2)
    if g["chosen"] is not None:
      ax.plot(g["client_axis"].index(g["chosen"]["client_lr"]),
              g["server_axis"].index(g["chosen"]["server_lr"]), "o", mfc="none", mec="white",
              ms=11, mew=2)
    _ticks(ax, "x", g["client_axis"])
    _ticks(ax, "y", g["server_axis"])
    ax.set_title(method, fontsize=9)
    ax.set_xlabel("log10 client rate", fontsize=8)
    ax.set_ylabel("log10 server rate" if g["server_axis"] != [None] else "no server rate",
                  fontsize=8)
  for ax in axes.ravel()[len(methods):]:
    ax.axis("off")
  if image is not None:
    fig.colorbar(image, ax=axes.ravel().tolist(), label="validation score")
  fig.suptitle(f"{dataset} ({profile}): tuning scores; x diverged, o chosen, blank not run",
               fontsize=9)
  path = out / f"{fmt.slug('tuning', profile, dataset)}.png"
  fig.savefig(path, dpi=80, metadata={"Software": None})
  plt.close(fig)
  return path


def _tuning(plan: _Plan, grids: dict, figures: pathlib.Path) -> list[str]:
  lines = ["## Tuning", "",
           "Per dataset, each method's 2-D grid of tuning scores (mean validation accuracy of "
           f"a tuning run's last {v2_records.SCORE_EVALS} evaluations; seed 0, the dataset's "
           "tuning setting) over log10 server rate x log10 client rate; local-only has one "
           "rate (a 1-row strip). The chosen point is the best finite score (ties to the "
           "smaller rates); 'interior' means on no edge of its axes.", ""]
  pairs = sorted({k[:2] for k in grids} | {(p, s[1]) for p in plan.profiles
                                           for s in plan.settings if s[0] == p})
  if not pairs:
    return lines + ["No tuning records yet.", ""]
  for profile, dataset in pairs:
    mine = {k[2]: g for k, g in grids.items() if k[:2] == (profile, dataset)}
    lines.append(f"**{dataset}** ({profile})")
    lines.append("")
    if mine:
      path = plot_tuning(grids, profile, dataset, figures)
      lines += [f"![tuning {dataset} {profile}](figures/{path.name})", ""]
    for method in v2_analysis.method_order(set(mine) | set(plan.methods.get(profile, []))):
      g = mine.get(method)
      if g is None:
        lines.append(f"- {method}: not tuned yet")
        continue
      c = g["chosen"]
      if c is None:
        lines.append(f"- {method}: no finite point; {g['runs']} tuning runs")
        continue
      rate = "" if c["server_lr"] is None else f"server {c['server_lr']:g}, "
      where = "interior" if g["interior"] else f"on the edge {', '.join(c['edges'])}"
      lines.append(f"- {method}: {rate}client {c['client_lr']:g} (score {c['score']:.3f}); "
                   f"{where}; {g['runs']} tuning runs")
    lines.append("")
  return lines



def _where(plan: _Plan, recs: Sequence[dict], summ: dict) -> list[str]:
  lines = ["## Where computed", "",
           "Per profile: the machines of its records (`where`), the seeds of its main cells, "
           "and how the profile departs from the full grid (its records' `reductions`, "
           "verbatim), which applies to every cell it ran.", ""]
  if not plan.profiles:
    return lines + ["No records yet.", ""]
  for profile in plan.profiles:
    mine = [r for r in recs if r["profile"] == profile]
    machines = sorted({v2_analysis.machine(r.get("where")) for r in mine})
    loads = [r["where"]["load_1min"] for r in mine
             if r.get("where") and r["where"].get("load_1min") is not None]
    seeds = sorted({s for k, c in summ.items() if k[0] == profile for s in c["seeds"]})
    reductions = list(dict.fromkeys(x for r in mine for x in r.get("reductions") or []))
    cells = [plan.label(s) for s in plan.settings if s[0] == profile
             and any(s + (m,) in summ for m in plan.methods.get(profile, []))]
    lines += [f"**{profile}** ({len(mine)} records)", "",
              f"- machines: {'; '.join(machines)}"
              + (f" (1-minute load {min(loads):g} to {max(loads):g})" if loads else ""),
              f"- seeds of the main cells: {seeds or 'none yet'}",
              "- reductions:" + (" none (the full grid)" if not reductions else "")]
    lines += [f"  - {x}" for x in reductions]
    lines += [f"- settings with main cells: {'; '.join(cells) if cells else 'none yet'}", ""]
  return lines


def _cuts(recs: Sequence[dict]) -> list[str]:
  datasets = sorted({r["dataset"] for r in recs})
  lines = ["## Cuts", "",
           "Each split cut's division of the model between one client and the server: "
           "parameters, and forward FLOPs per example (XLA's cost analysis; a training step "
           "is about three times the forward, on each side alike).", ""]
  if not datasets:
    return lines + ["No records yet.", ""]
  for dataset in datasets:
    shape, classes = v2_analysis.input_shape(dataset)
    model = v2_analysis.model_config(dataset)
    name = (f"MLP {'-'.join(map(str, model.hidden_sizes))}" if model.name == "mlp" else
            f"CNN conv5x5 {'-'.join(map(str, model.cnn_features))}, dense {model.cnn_dense}")
    table = v2_analysis.cut_table(dataset)
    lines += [f"**{dataset}**: {name}, input {shape}, {classes} classes", "",
              "| cut | methods | client params | server params | client FLOPs | "
              "server FLOPs |", "|---|---|---|---|---|---|"]
    for cut, c in table.items():
      lines.append(f"| {cut} {v2_analysis.CUTS[cut]} | "
                   f"{', '.join(v2_analysis.methods_with_cut(cut))} | "
                   f"{c.client_params:,} ({100 * c.client_param_share:.1f}%) | "
                   f"{c.server_params:,} ({100 - 100 * c.client_param_share:.1f}%) | "
                   f"{100 * c.client_flop_share:.1f}% | "
                   f"{100 - 100 * c.client_flop_share:.1f}% |")
    lines.append("")
  return lines


def _accuracy(plan: _Plan, summ: dict) -> list[str]:
  lines = ["## Final accuracy", "",
           "Final mean per-task test accuracy (points): seed mean ± 95% t half-width, sample "
           "std (ddof 1), seeds n, diverged seeds, the worst task's accuracy (seed mean), "
           "'no plateau' when a seed's curve still rose (its last 20% of evaluations gained "
           ">= 0.3 points over the best before them), and the evaluation spacing as a share "
           "of the budget.", ""]
  if not plan.settings:
    return lines + ["No main records yet.", ""]
  for s in plan.settings:
    lines += [f"**{plan.label(s)}**", "", "| method | server, client rate | accuracy | std | "
              "n | diverged | worst task | plateau | eval spacing |",
              "|---|---|---|---|---|---|---|---|---|"]
    for m in plan.methods.get(s[0], []):
      c = summ.get(s + (m,))
      if c is None:
        lines.append(f"| {m} | {_NOT_RUN} |  |  |  |  |  |  |  |")
        continue
      rates = "; ".join(f"{'—' if a is None else f'{a:g}'}, {b:g}" for a, b in c["rates"])
      acc, worst = c["accuracy"], c["worst"]
      plateau = {None: "—", True: "yes", False: "no plateau"}[c["all_plateaued"]]
      lines.append(f"| {m} | {rates} | {fmt.interval_text(acc, 100)} | "
                   f"{'—' if acc is None else fmt.num(100 * acc.std)} | {len(c['seeds'])} | "
                   f"{len(c['diverged'])} | {'—' if worst is None else fmt.num(100 * worst.mean)}"
                   f" | {plateau} | {100 * c['eval_spacing']:.1f}% |")
    lines.append("")
  return lines


def _targets(plan: _Plan, summ: dict) -> list[str]:
  fractions = " and ".join(f"{100 * f:g}%" for f in v2_analysis.TARGET_FRACTIONS)
  lines = ["## Costs to target accuracy", "",
           f"Targets: {fractions} of the best method's seed-mean final accuracy in the "
           "setting. Per seed, the costs at its first evaluation reaching the target: client "
           "steps (batches per client), MB sent and received by all clients, sequential "
           "message rounds (loop steps x exchanges per step) and modelled wall-clock seconds "
           "under each link (loop steps x (measured compute per step + per exchange half a "
           "round trip and the largest client's bytes over the link), `link_model`). Mean ± "
           "95% t half-width over seeds, given only when every seed reached the target; "
           "else 'reached in k of n'.", ""]
  links = [link.name for link in link_model.LINKS]
  found = v2_analysis.targets(summ)
  if not plan.settings:
    return lines + ["No main records yet.", ""]
  for s in plan.settings:
    t = found.get(s)
    if t is None or not t["levels"]:
      lines += [f"**{plan.label(s)}**: no finished run yet.", ""]
      continue
    for level in t["levels"]:
      lines += [f"**{plan.label(s)}**, target {100 * level['fraction']:g}% of "
                f"{100 * t['best']:.1f} ({t['best_method']}) = {100 * level['target']:.1f}",
                "", "| method | reached | client steps | MB | message rounds | "
                + " | ".join(f"s at {n}" for n in links) + " |", "|---" * (5 + len(links)) + "|"]
      for m, r in level["methods"].items():
        mb = r["bytes"] if isinstance(r["bytes"], str) else fmt.interval_text(r["bytes"], 1e-6, 2)
        steps = fmt.interval_text(r["client_steps"], 1, 0)
        lines.append(f"| {m} | {r['reached']} of {r['n']} | {steps}"
                     f" | {mb} | {fmt.interval_text(r['rounds'], 1, 0)} | "
                     + " | ".join(fmt.interval_text(r["seconds"][n], 1, 2) for n in links) + " |")
      lines.append("")
  return lines


def _plot_curves(methods: dict, title: str, path: pathlib.Path) -> None:
  """Seed-mean accuracy vs client steps, MB and modelled seconds under each link."""
  panels = [("client steps", "client_steps", False), ("MB (all clients)", "bytes", True)]
  panels += [(f"seconds at {link.name}", link.name, True) for link in link_model.LINKS]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False,
                           sharey=True, layout="constrained")
  colours = plt.get_cmap("tab10")
  for i, (m, c) in enumerate(methods.items()):
    curve = c["curve"]
    if curve is None:
      continue
    style = dict(color=colours(i % 10), ls="-" if m.startswith("mtsl") else "--", label=m)
    for ax, (_, key, log) in zip(axes[0], panels):
      if key == "client_steps":
        xs = curve["client_steps"]
      elif key == "bytes":
        xs = [b / 1e6 for b in curve["bytes"]]
      else:
        xs = curve["seconds"].get(key)
      if xs is None or (log and max(xs) <= 0):  # nothing sent (local-only): no log axis
        continue
      ax.plot(xs, [100 * a for a in curve["accuracy_mean"]], **style)
  for ax, (name, _, log) in zip(axes[0], panels):
    ax.set_xlabel(name, fontsize=8)
    if log and ax.lines:
      ax.set_xscale("log")
  axes[0][0].set_ylabel("mean per-task test accuracy (%)", fontsize=8)
  axes[0][0].legend(fontsize=6)
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=80, metadata={"Software": None})
  plt.close(fig)


def _curves(plan: _Plan, summ: dict, figures: pathlib.Path) -> list[str]:
  lines = ["## Curves", "",
           "Per setting: seed-mean test accuracy against client steps, against MB of all "
           "clients (log; local-only sends nothing and is absent) and against modelled "
           "wall-clock seconds under each link (log). Solid: MTSL rows.", ""]
  if not plan.settings:
    return lines + ["No main records yet.", ""]
  for s in plan.settings:
    methods = {m: summ[s + (m,)] for m in plan.methods.get(s[0], []) if s + (m,) in summ}
    if not any(c["curve"] for c in methods.values()):
      lines += [f"**{plan.label(s)}**: {_NOT_RUN}.", ""]
      continue
    path = figures / f"{fmt.slug('curves', *s)}.png"
    _plot_curves(methods, plan.label(s), path)
    lines += [f"**{plan.label(s)}**", "", f"![curves {plan.label(s)}](figures/{path.name})", ""]
  return lines


THREATS = (
    "Our CNN is small (conv 5x5 16 and 32 channels, dense 128), not the paper's models, and "
    "every split cuts after its first block.",
    "CPU profile budgets are far shorter than a plateau: its accuracies compare methods "
    "early in training, where rankings can differ from those at convergence.",
    "Evaluation may be on a capped random subset of each client's examples (a profile's "
    "reductions say so), which adds noise to every accuracy.",
    "The tuning budget is shorter than the main budget: rates that win early can lose "
    "later (and the reverse).",
    "One tuning setting and one seed (0) choose the rates for every setting of a dataset.",
    "The link model ignores any overlap of compute and communication and any queueing at "
    "the server; SplitFed v2's server serves clients in turn, which it does not price.",
    "Compute time per step is measured on the machine that ran the records, with all "
    "clients simulated together in one program, not on separate client devices.",
    "Runs do not stop at their plateau: every run trains the stated maximum and reports its "
    "final evaluation; the plateau rule is applied afterwards, to the test curve (a "
    "validation curve per run would double the evaluation cost), and only marks cells. "
    "It chooses nothing, so no choice is made on the test set.",
    "The paired tests are not corrected for multiple comparisons (12 claims per setting): "
    "at 5% about one claim in twenty reads 'holds' or 'fails' by chance.",
)


def _threats(summ: dict, grids: dict) -> list[str]:
  lines = ["## Threats to validity", "", "What is unlike the paper, or unlike a deployment:", ""]
  lines += [f"- {t}" for t in THREATS]
  notes = v2_analysis.validity_notes(summ, grids)
  lines += ["", "From these records:", ""]
  lines += [f"- {n}" for n in notes] if notes else ["- none of the checks flags a cell."]
  return lines + [""]


def write_report(results: pathlib.Path, report: pathlib.Path) -> None:
  """Writes `report` (markdown) and `<report dir>/figures/*.png` from the records.

  Args:
    results: the JSONL of run records (a missing file reads as no records).
    report: the markdown file to write.
  """
  recs = records.ResultsFile(results).load()
  summ = v2_analysis.summaries(recs)
  grids = v2_analysis.tuning_grids(recs)
  plan = _Plan(recs, summ)
  figures = report.parent / "figures"
  figures.mkdir(parents=True, exist_ok=True)
  tune = sum(r["phase"] == "tune" for r in recs)
  lines = ["# Comparison v2: MTSL against its baselines", "",
           f"Generated from `{results}` ({len(recs)} run records: {tune} tuning, "
           f"{len(recs) - tune} main) by `{REGENERATE}`, which reads the records only; "
           "`python launch/compare_v2.py --profile=<profile>` first runs whatever of the "
           "profile's tuning and main cells is not recorded yet (finished runs are kept), "
           "then writes this report again. Where the shared server part helps, over data "
           "per client x clients x cut: [docs/when_mtsl_helps.md]"
           "(../../docs/when_mtsl_helps.md).", ""]
  lines += _verdict_table(plan, summ)
  lines += _tuning(plan, grids, figures)
  lines += _where(plan, recs, summ)
  lines += _cuts(recs)
  lines += _accuracy(plan, summ)
  lines += _targets(plan, summ)
  lines += _curves(plan, summ, figures)
  lines += _threats(summ, grids)
  report.parent.mkdir(parents=True, exist_ok=True)
  report.write_text("\n".join(lines), encoding="utf-8")
