"""From the comparison v2's records to its numbers: cells, paired claims, targets, grids, cuts.

Pure functions of the record dicts (`v2_records`), so that the report can be regenerated
at any time from a partial file and the tests can feed hand-made records. Definitions the
report states:

  * a *cell* is one (profile, dataset, setting, noise, method) of the main phase, one
    record per seed (the latest record of a seed wins, so a cell rerun at a new tuned
    point replaces the old one);
  * a *setting* is one (profile, dataset, setting, noise): the cells compared there;
  * a *claim* "<MTSL row> reaches a higher final mean per-task test accuracy than
    <baseline>" is a paired t-test over the seeds both finished (`statistics.paired`)
    with a three-way verdict (`statistics.verdict`);
  * the *targets* of a setting are TARGET_FRACTIONS of the best method's seed-mean final
    accuracy there; costs to a target are those at the first evaluation reaching it,
    summarized over seeds only when every seed reached it.
"""

import collections
import math
from typing import Any, Iterable, Sequence

import ml_collections

from mtsl_jax import config_base, cut_costs
from mtsl_jax.comparison import link_model, statistics, v2_grid, v2_records

MTSL_ROWS = ("mtsl_bottom", "mtsl_u_shaped")
BASELINES = ("fedavg", "fedem", "splitfed_v1", "splitfed_v2", "fedrep", "local")
TARGET_FRACTIONS = (0.9, 0.97)
CONFIDENCE = 0.95
FEW_SEEDS = 5            # cells with fewer seeds than this are named among the threats
MAX_EVAL_SPACING = 0.02  # evaluations sparser than this are named among the threats

# Each split cut as (client bottom blocks, client top blocks), read off the MTSL rows.
CUTS = {name: (v2_grid.METHODS[f"mtsl_{name}"].overrides["split.client_bottom_blocks"],
               v2_grid.METHODS[f"mtsl_{name}"].overrides["split.client_top_blocks"])
        for name in ("bottom", "u_shaped")}
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1),
                "mnist+fashion_mnist": (28, 28, 1)}
IMAGE_CLASSES = 10


def setting_key(record: dict) -> tuple:
  """The setting a record belongs to.

  Args:
    record: a run record.

  Returns:
    (profile, dataset, setting, noise).
  """
  return record["profile"], record["dataset"], record["setting"], record.get("noise")


def method_rank(method: str) -> tuple[int, str]:
  """A sort key of methods: the grid's order (MTSL rows first), unknown names last.

  Args:
    method: a method name.

  Returns:
    (position in v2_grid.METHODS, '') or, for an unknown name, (len, name).
  """
  names = list(v2_grid.METHODS)
  return (names.index(method), "") if method in names else (len(names), method)


def method_order(methods: Iterable[str]) -> list[str]:
  """Methods in the grid's order (MTSL rows first), unknown names last and sorted.

  Args:
    methods: method names (duplicates allowed).

  Returns:
    The distinct names, ordered by `method_rank`.
  """
  return sorted(set(methods), key=method_rank)


def main_cells(recs: Sequence[dict]) -> dict[tuple, list[dict]]:
  """(profile, dataset, setting, noise, method) -> its main records, one per seed.

  Of a run key the latest record wins (`v2_records.select`); of a seed, the record whose
  key was written last (a cell rerun at another tuned point supersedes the old runs).
  """
  position = {v2_records.key(r): i for i, r in enumerate(recs)}
  per_seed = {}
  for r in v2_records.select(recs, phase="main"):
    slot = (*setting_key(r), r["method"], r["seed"])
    if slot not in per_seed or position[v2_records.key(r)] > position[
        v2_records.key(per_seed[slot])]:
      per_seed[slot] = r
  cells = collections.defaultdict(list)
  for slot in sorted(per_seed, key=repr):
    cells[slot[:-1]].append(per_seed[slot])
  return {k: sorted(v, key=lambda r: r["seed"]) for k, v in cells.items()}


def loop_steps(run: dict, client_steps: float) -> float:
  """Loop steps (rounds of a federated method) after `client_steps` of `run`.

  Args:
    run: a main record (its `client_steps_per_step`).
    client_steps: client steps per client so far.

  Returns:
    client_steps / client_steps_per_step.
  """
  return client_steps / run["client_steps_per_step"]


def seconds_at(run: dict, client_steps: float, link: link_model.Link) -> float | None:
  """Modelled wall-clock seconds after `client_steps` of `run` under `link`.

  Args:
    run: a main record (its exchanges, compute_seconds_per_step, client_steps_per_step).
    client_steps: client steps per client so far.
    link: the link model.

  Returns:
    Loop steps x `link_model.step_seconds` of the run's exchanges and measured compute;
    None when the record lacks either.
  """
  if run.get("exchanges") is None or run.get("compute_seconds_per_step") is None:
    return None
  per_step = link_model.step_seconds(run["exchanges"], run["compute_seconds_per_step"], link)
  return loop_steps(run, client_steps) * per_step


def _mean_curve(done: Sequence[dict]) -> dict[str, Any] | None:
  """The seed-mean curve of finished runs (truncated to the shortest), with seconds."""
  if not done:
    return None
  n = min(len(r["curve"]["accuracy_mean"]) for r in done)
  first = done[0]["curve"]

  def mean(values):
    return [sum(v[i] for v in values) / len(values) for i in range(n)]

  out = {"client_steps": first["client_steps"][:n], "bytes": first["bytes"][:n],
         "accuracy_mean": mean([r["curve"]["accuracy_mean"] for r in done]), "seconds": {}}
  for link in link_model.LINKS:
    times = [[seconds_at(r, s, link) for s in r["curve"]["client_steps"][:n]] for r in done]
    if all(t is not None for row in times for t in row):
      out["seconds"][link.name] = mean(times)
  return out


def machine(where: dict | None) -> str:
  """One line naming the machine of a record's `where`.

  Args:
    where: the record's `where` (None for records that lack it).

  Returns:
    E.g. 'cpu (cpu), 2 CPUs, host vm, jax 0.10.2' (the load is left out: it varies
    from run to run on one machine).
  """
  if not where:
    return "not recorded"
  return (f"{where.get('device_kind')} ({where.get('backend')}), {where.get('cpus')} CPUs, "
          f"host {where.get('host')}, jax {where.get('jax')}")


def summarize_cell(runs: Sequence[dict]) -> dict[str, Any]:
  """Seed statistics of one main cell.

  Args:
    runs: the cell's records, one per seed.

  Returns:
    {'seeds', 'final_mean' and 'final_worst' (seed -> final accuracy, None: diverged),
     'diverged' (seeds), 'accuracy' and 'worst' (`statistics.t_interval` over finished
     seeds, None when none finished), 'plateaued' (seed -> `statistics.plateaued` of its
     accuracy_mean curve; None for a curve of fewer than 2 evaluations), 'all_plateaued'
     (None when no seed finished), 'eval_spacing' (the largest eval_every / num_steps),
     'reductions', 'where' (machine descriptions), 'rates' ((server_lr, client_lr) of
     the seeds), 'curve' (the seed-mean curve, `seconds` per link), 'runs'}.
  """
  done = [r for r in runs if r.get("final") is not None]
  plateau = {r["seed"]: (statistics.plateaued(r["curve"]["accuracy_mean"])
                         if len(r["curve"]["accuracy_mean"]) >= 2 else None) for r in done}
  return {
      "seeds": [r["seed"] for r in runs],
      "final_mean": {r["seed"]: r["final"]["accuracy_mean"] if r.get("final") else None
                     for r in runs},
      "final_worst": {r["seed"]: r["final"]["accuracy_worst"] if r.get("final") else None
                      for r in runs},
      "diverged": [r["seed"] for r in runs if r.get("final") is None],
      "accuracy": statistics.t_interval([r["final"]["accuracy_mean"] for r in done],
                                        CONFIDENCE) if done else None,
      "worst": statistics.t_interval([r["final"]["accuracy_worst"] for r in done],
                                     CONFIDENCE) if done else None,
      "plateaued": plateau,
      "all_plateaued": all(v is True for v in plateau.values()) if done else None,
      "eval_spacing": max(r["eval_every"] / r["num_steps"] for r in runs),
      "reductions": list(dict.fromkeys(x for r in runs for x in r.get("reductions") or [])),
      "where": sorted({machine(r.get("where")) for r in runs}),
      "rates": sorted({(r.get("server_lr"), r["client_lr"]) for r in runs},
                      key=lambda p: (p[0] or 0, p[1])),
      "curve": _mean_curve(done),
      "runs": list(runs),
  }


def summaries(recs: Sequence[dict]) -> dict[tuple, dict[str, Any]]:
  """Every main cell's summary.

  Args:
    recs: run records (any phase, in file order).

  Returns:
    `summarize_cell` of every cell of `main_cells`, under the same keys.
  """
  return {k: summarize_cell(v) for k, v in main_cells(recs).items()}


def by_setting(summ: dict[tuple, dict]) -> dict[tuple, dict[str, dict]]:
  """Cell summaries grouped by setting.

  Args:
    summ: `summaries` of the records.

  Returns:
    (profile, dataset, setting, noise) -> method -> summary.
  """
  out = collections.defaultdict(dict)
  for key in summ:
    out[key[:4]][key[4]] = summ[key]
  return dict(out)


def claim(mtsl: dict, baseline: dict) -> dict[str, Any]:
  """The paired comparison of two cells' final mean accuracy over their common seeds.

  Args:
    mtsl, baseline: `summarize_cell` of the MTSL row and of the baseline.

  Returns:
    {'verdict', 'mean', 'low', 'high', 'p', 'n', 'note', 'seeds'}: the mean per-seed
    difference (mtsl - baseline, fraction of accuracy) with its CONFIDENCE interval and
    two-sided p over the n seeds both finished; with n < 2 the verdict is 'not
    significant', the note 'n < 2', and only the mean is given (for n = 1).
  """
  seeds = sorted(s for s in mtsl["final_mean"] if mtsl["final_mean"][s] is not None
                 and baseline["final_mean"].get(s) is not None)
  a = [mtsl["final_mean"][s] for s in seeds]
  b = [baseline["final_mean"][s] for s in seeds]
  if len(seeds) < 2:
    mean = a[0] - b[0] if seeds else None
    return {"verdict": "not significant", "mean": mean, "low": None, "high": None,
            "p": None, "n": len(seeds), "note": "n < 2", "seeds": seeds}
  test = statistics.paired(a, b, CONFIDENCE)
  d = test.difference
  return {"verdict": statistics.verdict(test), "mean": float(d.mean), "low": float(d.low),
          "high": float(d.high),
          "p": None if math.isnan(test.p) else test.p, "n": d.n, "note": "", "seeds": seeds}


def claims(summ: dict[tuple, dict]) -> dict[tuple, dict[tuple, dict]]:
  """Every claim of an MTSL row against a baseline, in each setting both were run in.

  Args:
    summ: `summaries` of the records.

  Returns:
    (MTSL row, baseline) -> setting -> `claim`.
  """
  out = collections.defaultdict(dict)
  for setting, methods in by_setting(summ).items():
    for mtsl in MTSL_ROWS:
      for base in BASELINES:
        if mtsl in methods and base in methods:
          out[(mtsl, base)][setting] = claim(methods[mtsl], methods[base])
  return dict(out)


def first_reaching(run: dict, target: float) -> int | None:
  """The first evaluation of a run at or above a target accuracy.

  Args:
    run: a main record.
    target: the accuracy (curve's accuracy_mean) to reach.

  Returns:
    Its index in the curve; None when the run never reached it or diverged.
  """
  if run.get("curve") is None:
    return None
  return next((i for i, a in enumerate(run["curve"]["accuracy_mean"]) if a >= target), None)


def to_target(runs: Sequence[dict], target: float) -> dict[str, Any]:
  """Costs of a cell's seeds to `target`, at each seed's first evaluation reaching it.

  Args:
    runs: the cell's records, one per seed.
    target: the accuracy (mean per-task, test set) to reach.

  Returns:
    {'reached': k, 'n': n, 'client_steps', 'bytes' (all clients, cumulative), 'rounds'
     (sequential message rounds: loop steps x exchanges per step), 'seconds' (link name
     -> modelled wall-clock)}: each a `statistics.t_interval` over the seeds when all n
     reached the target, else the string 'reached in k of n' (a link's seconds are None
     when a record lacks its exchanges or compute time).
  """
  hits = [(r, first_reaching(r, target)) for r in runs]
  hits = [(r, i) for r, i in hits if i is not None]
  k, n = len(hits), len(runs)
  out = {"reached": k, "n": n}
  if k < n:
    text = f"reached in {k} of {n}"
    return {**out, "client_steps": text, "bytes": text, "rounds": text,
            "seconds": {link.name: text for link in link_model.LINKS}}

  def interval(values):
    return statistics.t_interval(values, CONFIDENCE)

  steps = [r["curve"]["client_steps"][i] for r, i in hits]
  out["client_steps"] = interval(steps)
  out["bytes"] = interval([r["curve"]["bytes"][i] for r, i in hits])
  out["rounds"] = (interval([loop_steps(r, s) * len(r["exchanges"])
                             for (r, _), s in zip(hits, steps)])
                   if all(r.get("exchanges") is not None for r, _ in hits) else None)
  out["seconds"] = {}
  for link in link_model.LINKS:
    times = [seconds_at(r, s, link) for (r, _), s in zip(hits, steps)]
    out["seconds"][link.name] = None if None in times else interval(times)
  return out


def targets(summ: dict[tuple, dict]) -> dict[tuple, dict[str, Any]]:
  """The targets of every setting and each method's costs to them.

  Args:
    summ: `summaries` of the records.

  Returns:
    setting -> {'best_method', 'best' (its seed-mean final accuracy), 'levels': one
    {'fraction', 'target', 'methods': method -> `to_target`} per TARGET_FRACTIONS};
    no levels where no method finished a seed.
  """
  out = {}
  for setting, methods in by_setting(summ).items():
    means = {m: s["accuracy"].mean for m, s in methods.items() if s["accuracy"] is not None}
    if not means:
      out[setting] = {"best_method": None, "best": None, "levels": []}
      continue
    best_method = max(sorted(means), key=lambda m: means[m])
    levels = []
    for fraction in TARGET_FRACTIONS:
      target = fraction * means[best_method]
      levels.append({"fraction": fraction, "target": target,
                     "methods": {m: to_target(methods[m]["runs"], target)
                                 for m in method_order(methods)}})
    out[setting] = {"best_method": best_method, "best": means[best_method], "levels": levels}
  return out


def tuning_grids(recs: Sequence[dict]) -> dict[tuple, dict[str, Any]]:
  """(profile, dataset, method) -> its tuning grid as recorded.

  Returns per key: {'server_axis' (sorted; [None] for local-only), 'client_axis'
  (sorted), 'scores' (server x client matrix of `v2_records.tuning_score`, None where the
  run diverged or the point was not run), 'ran' (matching booleans), 'chosen'
  (`v2_records.tuned_point`, None when nothing finite), 'interior' (chosen on no edge),
  'runs' (tuning runs recorded), 'settings' (tuning settings seen)}.
  """
  groups = collections.defaultdict(list)
  for r in v2_records.select(recs, phase="tune"):
    groups[(r["profile"], r["dataset"], r["method"])].append(r)
  out = {}
  for key in sorted(groups, key=lambda k: (k[0], k[1], method_rank(k[2]))):
    mine = groups[key]
    servers = sorted({r["server_lr"] for r in mine if r["server_lr"] is not None}) or [None]
    clients = sorted({r["client_lr"] for r in mine})
    at = {(r["server_lr"], r["client_lr"]): r for r in mine}
    chosen = v2_records.tuned_point(recs, *key)
    out[key] = {
        "server_axis": servers, "client_axis": clients,
        "scores": [[v2_records.tuning_score(at[(s, c)]) if (s, c) in at else None
                    for c in clients] for s in servers],
        "ran": [[(s, c) in at for c in clients] for s in servers],
        "chosen": chosen, "interior": chosen is not None and not chosen["edges"],
        "runs": len(mine), "settings": sorted({r["setting"] for r in mine}),
    }
  return out


def model_config(dataset: str) -> ml_collections.ConfigDict:
  """The `model` config section the grid trains on a dataset.

  Args:
    dataset: a key of v2_grid.DATASETS.

  Returns:
    The base config's model section with the grid's model (`v2_grid.make_config`).
  """
  model = config_base.base_config().model
  model.update(v2_grid.SYNTHETIC_MLP if dataset == "synthetic" else v2_grid.CNN)
  return model


def input_shape(dataset: str) -> tuple[tuple[int, ...], int]:
  """What a dataset's model takes and predicts.

  Args:
    dataset: a key of v2_grid.DATASETS.

  Returns:
    (one example's shape, number of classes).
  """
  if dataset == "synthetic":
    synthetic = config_base.base_config().data.synthetic
    return (synthetic.num_features,), synthetic.num_classes
  return IMAGE_SHAPES[dataset], IMAGE_CLASSES


def cut_table(dataset: str) -> dict[str, cut_costs.SideCosts]:
  """Each cut's division of a dataset's model.

  Args:
    dataset: a key of v2_grid.DATASETS.

  Returns:
    Cut name (CUTS) -> `cut_costs.SideCosts` of one client and the server.
  """
  shape, classes = input_shape(dataset)
  costs = cut_costs.block_costs(model_config(dataset), shape, classes)
  return {name: cut_costs.side_costs(costs, *cut) for name, cut in CUTS.items()}


def methods_with_cut(cut: str) -> list[str]:
  """The main methods that split the model at a cut.

  Args:
    cut: a key of CUTS.

  Returns:
    Those of v2_grid.MAIN_METHODS whose split fields equal the cut's.
  """
  bottom, top = CUTS[cut]
  return [m for m in v2_grid.MAIN_METHODS
          if v2_grid.METHODS[m].overrides.get("split.client_bottom_blocks") == bottom
          and v2_grid.METHODS[m].overrides.get("split.client_top_blocks") == top]


def planned(profile_name: str) -> tuple[list[tuple], tuple[str, ...]]:
  """What a profile's main phase runs (as `v2_runner.run_profile` does).

  Args:
    profile_name: a profile's name (unknown profiles plan nothing: the report then shows
      what the records hold).

  Returns:
    (settings as (profile, dataset, setting, noise), the profile's methods).
  """
  profile = v2_grid.PROFILES.get(profile_name)
  if profile is None:
    return [], ()
  settings = []
  for dataset in profile.datasets:
    spec = v2_grid.DATASETS[dataset]
    settings += [(profile_name, dataset, s, None) for s in v2_grid.settings_of(profile, dataset)]
    if profile.noise and spec.noise:
      settings += [(profile_name, dataset, spec.tune_setting, n) for n in v2_grid.NOISE]
  return settings, profile.methods


def validity_notes(summ: dict[tuple, dict], grids: dict[tuple, dict]) -> list[str]:
  """The data-driven threats to validity.

  Args:
    summ: `summaries` of the records.
    grids: `tuning_grids` of the records.

  Returns:
    One line per kind of threat found (tuned points on an edge, grids without a finite
    point, cells without plateau, sparse evaluations, few seeds), naming what it affects.
  """

  def name(key):
    profile, dataset, setting, noise, method = key
    return f"{profile}: {dataset} / {setting}{f' + {noise}' if noise else ''} {method}"

  lines = []
  edges = [f"{p}: {d} {m} ({', '.join(g['chosen']['edges'])})"
           for (p, d, m), g in grids.items() if g["chosen"] and g["chosen"]["edges"]]
  untuned = [f"{p}: {d} {m}" for (p, d, m), g in grids.items() if g["chosen"] is None]
  no_plateau = [f"{name(k)} ({sum(v is not True for v in s['plateaued'].values())} of "
                f"{len(s['plateaued'])} finished seeds)" for k, s in summ.items()
                if s["all_plateaued"] is False]
  sparse = [f"{name(k)} ({100 * s['eval_spacing']:.1f}%)" for k, s in summ.items()
            if s["eval_spacing"] > MAX_EVAL_SPACING + 1e-12]
  few = [f"{name(k)} ({len(s['seeds'])})" for k, s in summ.items()
         if len(s["seeds"]) < FEW_SEEDS]
  # Edge extensions give a method more tuning runs than the others: unequal effort.
  by_dataset = collections.defaultdict(dict)
  for (p, d, m), g in grids.items():
    by_dataset[(p, d)][m] = g["runs"]
  unequal = [f"{p}: {d} (" + ", ".join(f"{m} {n}" for m, n in runs.items()) + ")"
             for (p, d), runs in by_dataset.items() if len(set(runs.values())) > 1]
  for items, text in (
      (edges, "Tuned points on an edge of their grid (a rate beyond it might do better)"),
      (untuned, "Tuning grids with no finite point (every run diverged)"),
      (no_plateau, "Cells where a seed did not plateau within the budget "
                   "(`statistics.plateaued`: the last 20% of evaluations gain >= 0.003)"),
      (sparse, f"Cells evaluated more sparsely than every {100 * MAX_EVAL_SPACING:g}% of "
               "the budget (targets are reached later than they are recorded)"),
      (few, f"Cells with fewer than {FEW_SEEDS} seeds"),
      (unequal, "Unequal tuning effort (grids extended at an edge have more runs)")):
    if items:
      lines.append(f"{text}: {'; '.join(items)}.")
  return lines
