"""From run records to the comparison's numbers: seed statistics, targets and claim checks.

Everything here is a pure function of the records (`records.ResultsFile.load()`), so the
report can be regenerated at any time, and the tests can feed it hand-made records with
known answers.

Definitions the report states:
  * a *cell* is one (phase, dataset, setting, noise, method): its seeds' records;
  * the *target* of a (dataset, setting, noise) is TARGET_FRACTION of the best seed-mean
    final accuracy over the methods there, rounded down to 0.01: a level most methods
    reach, so that steps and bytes to it compare speed rather than final accuracy;
  * steps (client steps of batch_size examples) and bytes to target are the medians over
    the seeds that reached it at an evaluation point, with how many did;
  * the paper's claims are checked for MTSL_PRIMARY (fixed before any result was seen)
    against the paper's baselines PAPER_BASELINES.
"""

import collections
import math
from typing import Any, Sequence

import numpy as np

from mtsl_jax.comparison import records

TARGET_FRACTION = 0.9
MTSL_PRIMARY = "mtsl_u_shaped"
PAPER_BASELINES = ("fedavg", "fedem", "splitfed_v1", "splitfed_v2")
NO_TRAFFIC = {"centralized": "n/a (pools raw data)", "local": "0 (nothing travels)"}


def cell_key(record: dict) -> tuple:
  """(phase, dataset, setting, noise as a tuple or None, method)."""
  noise = tuple(record["noise"]) if record.get("noise") else None
  return record["phase"], record["dataset"], record["setting"], noise, record["method"]


def cells(all_records: Sequence[dict]) -> dict[tuple, list[dict]]:
  """One record per seed of every cell, seeds in order.

  The latest record of a run key wins; of a seed's records, a finished one wins over a
  diverged one (a seed that diverged at the tuned rate counts with its fallback run at a
  smaller rate, see `runner._run_group`), and the tuned rate's over a fallback's.
  """
  latest = {records.run_key(r): r for r in all_records}
  chosen = {}
  for r in latest.values():
    key = (cell_key(r), r["seed"])
    rank = (r["final"] is not None, r.get("lr_fallback_from") is None, -r["lr"])
    if key not in chosen or rank > chosen[key][0]:
      chosen[key] = (rank, r)
  grouped = collections.defaultdict(list)
  for (cell, _), (_, r) in chosen.items():
    grouped[cell].append(r)
  return {k: sorted(v, key=lambda r: r["seed"]) for k, v in grouped.items()}


def summarize_cell(runs: Sequence[dict]) -> dict[str, Any]:
  """Seed statistics of one cell.

  Args:
    runs: the cell's records.

  Returns:
    {'seeds', 'diverged' (count), 'lr' (the tuned rate), 'fallback_seeds' (seeds that
     diverged at it and ran at 'fallback_lrs'), 'acc' (mean, std), 'worst' (mean, std),
     'wall_group' (seconds of the seed group), 'curves' (the finished runs' curves)};
    acc/worst are None when every seed diverged.
  """
  done = [r for r in runs if r["final"] is not None]
  fallbacks = sorted({r["lr"] for r in runs if r.get("lr_fallback_from") is not None})
  out = {"seeds": len(runs), "diverged": len(runs) - len(done),
         "lr": runs[0].get("lr_fallback_from") or runs[0]["lr"],
         "fallback_seeds": sum(r.get("lr_fallback_from") is not None for r in runs),
         "fallback_lrs": fallbacks,
         "acc": None, "worst": None, "curves": [r["curve"] for r in done],
         "wall_group": max(r["wall_seconds_group"] for r in runs)}
  if done:
    out["acc"] = records.seed_stats(r["final"]["accuracy_mean"] for r in done)
    out["worst"] = records.seed_stats(r["final"]["accuracy_worst"] for r in done)
  return out


def target_accuracy(summaries: dict[str, dict]) -> float | None:
  """TARGET_FRACTION of the best seed-mean final accuracy among `summaries` (per method)."""
  best = [s["acc"][0] for s in summaries.values() if s["acc"] is not None]
  if not best:
    return None
  return math.floor(TARGET_FRACTION * max(best) * 100) / 100


def to_target(summary: dict, target: float) -> dict[str, Any]:
  """Median client steps and bytes to `target` over the seeds that reached it.

  Returns:
    {'reached': k, 'of': n, 'steps': median or None, 'bytes': median or None}.
  """
  hits = [records.first_reaching(c, target) for c in summary["curves"]]
  hits = [h for h in hits if h is not None]
  out = {"reached": len(hits), "of": summary["seeds"], "steps": None, "bytes": None}
  if hits:
    out["steps"] = float(np.median([h[0] for h in hits]))
    out["bytes"] = float(np.median([h[1] for h in hits]))
  return out


def table(all_records: Sequence[dict], phase: str) -> dict[tuple, dict[str, dict]]:
  """(dataset, setting, noise) -> method -> summary (with 'to_target' and 'target')."""
  out = collections.defaultdict(dict)
  for (ph, dataset, setting, noise, method), runs in cells(all_records).items():
    if ph == phase:
      out[(dataset, setting, noise)][method] = summarize_cell(runs)
  for summaries in out.values():
    target = target_accuracy(summaries)
    for s in summaries.values():
      s["target"] = target
      s["to_target"] = to_target(s, target) if target is not None else None
  return dict(out)


def tuned_learning_rates(all_records: list[dict]) -> dict[tuple[str, str], float]:
  """(dataset, method) -> the grid value with the best final validation accuracy.

  Ties go to the smaller learning rate (the safer one).

  Args:
    all_records: records of the results file.

  Returns:
    The choice for every (dataset, method) with tuning records.
  """
  best: dict[tuple[str, str], tuple[float, float]] = {}
  for r in all_records:
    if r["phase"] != "tune":
      continue
    key = (r["dataset"], r["method"])
    score = -1.0 if r["final"] is None else r["final"]["accuracy_mean"]  # diverged: last
    if (key not in best or score > best[key][0]
        or (score == best[key][0] and r["lr"] < best[key][1])):
      best[key] = (score, r["lr"])
  return {k: lr for k, (_, lr) in best.items()}


def tuning_table(all_records: Sequence[dict]) -> dict[tuple[str, str], dict[float, float | None]]:
  """(dataset, method) -> learning rate -> final validation accuracy (None: diverged)."""
  out = collections.defaultdict(dict)
  for r in all_records:
    if r["phase"] == "tune":
      out[(r["dataset"], r["method"])][r["lr"]] = (
          None if r["final"] is None else r["final"]["accuracy_mean"])
  return dict(out)


def _acc(summaries: dict, method: str) -> float | None:
  s = summaries.get(method)
  return None if s is None or s["acc"] is None else s["acc"][0]


def accuracy_claim(main: dict[tuple, dict[str, dict]],
                   baselines: Sequence[str] = PAPER_BASELINES) -> list[dict]:
  """Per setting: MTSL_PRIMARY's accuracy minus the best of `baselines`.

  Args:
    main: `table(records, 'main')`.
    baselines: the methods MTSL is held against (default: the paper's).

  Returns:
    One row per (dataset, setting): {'dataset', 'setting', 'mtsl', 'best_baseline',
    'baseline', 'margin', 'holds'}; rows lacking MTSL or every baseline are skipped.
  """
  rows = []
  for (dataset, setting, _), summaries in sorted(main.items(), key=lambda kv: kv[0][:2]):
    mtsl = _acc(summaries, MTSL_PRIMARY)
    base = {b: _acc(summaries, b) for b in baselines if _acc(summaries, b) is not None}
    if mtsl is None or not base:
      continue
    best = max(base, key=base.get)
    rows.append({"dataset": dataset, "setting": setting, "mtsl": mtsl, "baseline": best,
                 "best_baseline": base[best], "margin": mtsl - base[best],
                 "holds": mtsl > base[best]})
  return rows


def efficiency_claim(main: dict[tuple, dict[str, dict]], quantity: str) -> list[dict]:
  """Per setting: does MTSL_PRIMARY reach the target with less `quantity` than every
  paper baseline that reaches it? ('steps' or 'bytes'.)

  Returns:
    Rows {'dataset', 'setting', 'target', 'mtsl', 'best_baseline', 'baseline', 'holds'};
    'holds' is None when MTSL does not reach the target (then the claim fails) or no
    baseline does (then MTSL wins outright: True).
  """
  rows = []
  for (dataset, setting, _), summaries in sorted(main.items(), key=lambda kv: kv[0][:2]):
    if (MTSL_PRIMARY not in summaries or summaries[MTSL_PRIMARY]["to_target"] is None
        or not any(b in summaries for b in PAPER_BASELINES)):
      continue
    mtsl = summaries[MTSL_PRIMARY]["to_target"][quantity]
    base = {b: summaries[b]["to_target"][quantity] for b in PAPER_BASELINES
            if b in summaries and summaries[b]["to_target"]
            and summaries[b]["to_target"][quantity] is not None}
    best = min(base, key=base.get) if base else None
    holds = False if mtsl is None else (True if best is None else mtsl < base[best])
    rows.append({"dataset": dataset, "setting": setting,
                 "target": summaries[MTSL_PRIMARY]["target"], "mtsl": mtsl,
                 "baseline": best, "best_baseline": base.get(best), "holds": holds})
  return rows


def heterogeneity_claim(main: dict[tuple, dict[str, dict]], reference: str = "iid"
                        ) -> list[dict]:
  """Per dataset and non-reference setting: each method's accuracy change from `reference`.

  Returns:
    Rows {'dataset', 'setting', 'changes': method -> change (None if missing),
    'holds': MTSL_PRIMARY's change >= every paper baseline's}.
  """
  rows = []
  by_dataset = collections.defaultdict(dict)
  for (dataset, setting, _), summaries in main.items():
    by_dataset[dataset][setting] = summaries
  for dataset, settings in sorted(by_dataset.items()):
    if reference not in settings:
      continue
    ref = settings[reference]
    for setting, summaries in settings.items():
      if setting == reference:
        continue
      changes = {}
      for method in summaries:
        now, before = _acc(summaries, method), _acc(ref, method)
        changes[method] = None if now is None or before is None else now - before
      base = [changes.get(b) for b in PAPER_BASELINES if changes.get(b) is not None]
      mtsl = changes.get(MTSL_PRIMARY)
      rows.append({"dataset": dataset, "setting": setting, "changes": changes,
                   "holds": None if mtsl is None or not base else mtsl >= max(base)})
  return rows


def noise_claim(all_records: Sequence[dict]) -> list[dict]:
  """Per noise kind and level: each method's accuracy drop from the noiseless main run.

  The noiseless reference of a noise cell is the main-phase cell of the same dataset and
  setting.

  Returns:
    Rows {'dataset', 'kind', 'level', 'accuracy': method -> acc, 'drops': method -> drop,
    'holds': MTSL_PRIMARY drops no more than every paper baseline, 'holds_accuracy':
    MTSL_PRIMARY's noisy accuracy is above every paper baseline's}.
  """
  main, noisy = table(all_records, "main"), table(all_records, "noise")
  rows = []
  for (dataset, setting, noise), summaries in sorted(noisy.items(), key=lambda kv: (
      kv[0][0], kv[0][2][0], kv[0][2][1])):
    clean = main.get((dataset, setting, None), {})
    acc = {m: _acc(summaries, m) for m in summaries}
    drops = {m: (None if acc[m] is None or _acc(clean, m) is None else _acc(clean, m) - acc[m])
             for m in summaries}
    base = [drops[b] for b in PAPER_BASELINES if drops.get(b) is not None]
    base_acc = [acc[b] for b in PAPER_BASELINES if acc.get(b) is not None]
    mtsl, mtsl_acc = drops.get(MTSL_PRIMARY), acc.get(MTSL_PRIMARY)
    rows.append({"dataset": dataset, "setting": setting, "kind": noise[0], "level": noise[1],
                 "accuracy": acc, "drops": drops,
                 "holds": None if mtsl is None or not base else mtsl <= min(base),
                 "holds_accuracy": (None if mtsl_acc is None or not base_acc
                                    else mtsl_acc > max(base_acc))})
  return rows
