"""From the server map's records to its answer: cells, difference maps, ablations, counts.

Pure functions of the record dicts (`runner.KEY_FIELDS`), so the document is regenerated
from a partial file at any time and the tests feed hand-made records. Definitions the
document states:

  * a *cell* is one (profile, dataset, setting, examples, clients, method) of the map or
    ablation phase, one record per seed (the latest record of a seed wins);
  * a *map* is one (profile, dataset, setting): its cells over (examples, clients);
  * a *difference* "MTSL row minus X" in a cell is the paired t-test of the final mean
    per-task test accuracy over the seeds both finished (`v2_analysis.claim`), with a
    three-way verdict: 'holds' (MTSL significantly higher), 'not significant', 'fails'
    (significantly lower);
  * "the best of local-only and FedAvg" is, per cell, whichever of the two has the higher
    seed-mean accuracy there (choosing the stronger one after seeing the results makes
    the comparison harder for MTSL, never easier);
  * an *ablation* difference is "ablated MTSL minus the MTSL row" at the same cell.
"""

import collections
from typing import Any, Sequence

import ml_collections

from mtsl_jax import config_base, cut_costs
from mtsl_jax.comparison import v2_analysis
from mtsl_jax.server_map import grid, runner

MTSL_ROWS = tuple(f"mtsl_{name}" for name in grid.CUTS)
VERSUS = {  # comparison name -> the baselines it takes the best of
    "best of local and FedAvg": ("local", "fedavg"),
    "FedRep": ("fedrep",),
}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def cells(recs: Sequence[dict], *, retuned: bool = False) -> dict[tuple, list[dict]]:
  """(profile, dataset, setting, examples, clients, method) -> its records, one per seed.

  Args:
    recs: run records of any phase, in file order.
    retuned: the tuned-once check's cells ('retuned' runs at the point tuned at their
      own cell) instead of the map's and the ablations'.

  Returns:
    The cells. A cell holds only runs at its method's tuned point (as the tuning records
    now choose it; every run when the method has no tuning records), so a re-tuned
    method never mixes seeds trained at two rates; of a seed, the record written last
    wins.
  """
  points = {}
  per_seed = {}
  phases = ("retuned",) if retuned else ("map", "ablations")
  for r in recs:  # file order, so the last record of a seed wins
    if r["phase"] not in phases:
      continue
    method = (r["profile"], r["dataset"], grid.base_method(r["method"]))
    if retuned:
      method += (r["examples"], r["clients"])
    if method not in points:
      points[method] = (runner.cell_tuned_point(recs, *method) if retuned
                        else runner.tuned_point(recs, *method))
    point = points[method]
    if point is not None and (r["server_lr"], r["client_lr"]) != (point["server_lr"],
                                                                   point["client_lr"]):
      continue
    per_seed[(r["profile"], r["dataset"], r["setting"], r["examples"], r["clients"],
              r["method"], r["seed"])] = r
  out = collections.defaultdict(list)
  for slot in sorted(per_seed, key=repr):
    out[slot[:-1]].append(per_seed[slot])
  return {k: sorted(v, key=lambda r: r["seed"]) for k, v in out.items()}


def summaries(recs: Sequence[dict], *, retuned: bool = False) -> dict[tuple, dict[str, Any]]:
  """`v2_analysis.summarize_cell` of every cell, under the keys of `cells`."""
  return {k: v2_analysis.summarize_cell(v) for k, v in cells(recs, retuned=retuned).items()}


def tuning_check(summ: dict[tuple, dict], retuned: dict[tuple, dict]) -> dict[str, dict]:
  """The map's cells beside the same cells with every method tuned at the cell.

  Args:
    summ: `summaries` of the records (the map, tuned once).
    retuned: `summaries(recs, retuned=True)`.

  Returns:
    {'methods': (profile, dataset, setting, examples, clients, method) -> {'once',
    'cell' (the two summaries), 'change' (`v2_analysis.claim` of cell-tuned minus
    tuned-once over their common seeds)}; 'verdicts': (profile, dataset, setting, MTSL
    row, comparison, (examples, clients)) -> {'once', 'cell' (the two `differences`
    claims), 'same' (equal verdicts)}}, over the cells both hold.
  """
  both = sorted(set(summ) & set(retuned), key=repr)
  methods = {k: {"once": summ[k], "cell": retuned[k],
                 "change": v2_analysis.claim(retuned[k], summ[k])} for k in both}
  once = differences({k: summ[k] for k in both})
  cell = differences({k: retuned[k] for k in both})
  verdicts = {}
  for diff_key, regimes in cell.items():
    for regime, c in regimes.items():
      o = once.get(diff_key, {}).get(regime)
      if o is not None:
        verdicts[(*diff_key, regime)] = {"once": o, "cell": c,
                                         "same": o["verdict"] == c["verdict"]}
  return {"methods": methods, "verdicts": verdicts}


def maps(summ: dict[tuple, dict]) -> dict[tuple, dict[tuple, dict[str, dict]]]:
  """Cell summaries grouped: (profile, dataset, setting) -> (examples, clients) -> method.

  Args:
    summ: `summaries` of the records.

  Returns:
    The nested dict.
  """
  out = collections.defaultdict(lambda: collections.defaultdict(dict))
  for key, s in summ.items():
    out[key[:3]][key[3:5]][key[5]] = s
  return {k: dict(v) for k, v in out.items()}


def best_baseline(methods: dict[str, dict], candidates: Sequence[str]) -> str | None:
  """The candidate with the highest seed-mean accuracy in a cell (None: none finished)."""
  finished = [m for m in candidates if m in methods and methods[m]["accuracy"] is not None]
  if not finished:
    return None
  return max(finished, key=lambda m: (methods[m]["accuracy"].mean, -candidates.index(m)))


def differences(summ: dict[tuple, dict]) -> dict[tuple, dict[tuple, dict]]:
  """Every MTSL row's paired difference against each comparison of VERSUS, per cell.

  Args:
    summ: `summaries` of the records.

  Returns:
    (profile, dataset, setting, MTSL row, comparison) -> (examples, clients) -> the
    `v2_analysis.claim` of MTSL minus the comparison, with 'baseline' (the method
    compared against), 'rising' (the sides, 'MTSL' or the baseline, with a seed not
    plateaued at the end of the budget) and 'budget_bound' (`budget_bound`).
  """
  out = collections.defaultdict(dict)
  for map_key, regimes in maps(summ).items():
    for regime, methods in regimes.items():
      for mtsl in MTSL_ROWS:
        if mtsl not in methods:
          continue
        for name, candidates in VERSUS.items():
          base = best_baseline(methods, candidates)
          if base is None:
            continue
          c = v2_analysis.claim(methods[mtsl], methods[base])
          rising = tuple(arm for arm, m in (("MTSL", mtsl), (base, base))
                         if methods[m]["all_plateaued"] is False)
          out[(*map_key, mtsl, name)][regime] = dict(
              c, baseline=base, rising=rising, budget_bound=budget_bound(c["verdict"],
                                                                        rising))
  return dict(out)


def budget_bound(verdict: str, rising: Sequence[str]) -> bool:
  """Whether more training could overturn a verdict reached at a fixed budget.

  A side still rising at the end of its budget (some seed not plateaued) can only gain:
  a win stands if the beaten baseline had plateaued, whatever MTSL did, and a loss
  stands if MTSL had; a tie stands only if both had.

  Args:
    verdict: 'holds', 'not significant' or 'fails' (MTSL minus the baseline).
    rising: the sides not plateaued in every seed: 'MTSL' and/or the baseline's name.

  Returns:
    True when the side the verdict goes against (either side, for a tie) was rising.
  """
  against_mtsl = "MTSL" in rising
  against_baseline = any(arm != "MTSL" for arm in rising)
  if verdict == "holds":
    return against_baseline
  if verdict == "fails":
    return against_mtsl
  return against_mtsl or against_baseline


def tally(diff: dict[tuple, dict]) -> dict[str, int]:
  """How many cells of a difference map hold, are not significant, and fail."""
  counts = collections.Counter(c["verdict"] for c in diff.values())
  return {v: counts.get(v, 0) for v in ("holds", "not significant", "fails")}


def seeds_per_cell(summ: dict[tuple, dict]) -> dict[str, dict[int, int]]:
  """How many seeds each profile's cells hold (diverged seeds count: they ran).

  Args:
    summ: `summaries` of the records.

  Returns:
    profile -> {number of seeds recorded: how many cells hold that many}.
  """
  out = collections.defaultdict(collections.Counter)
  for key, s in summ.items():
    out[key[0]][len(s["runs"])] += 1
  return {profile: dict(counts) for profile, counts in out.items()}


def ablations(summ: dict[tuple, dict]) -> dict[tuple, dict[str, dict]]:
  """Every ablation's paired difference from its MTSL row, per cell.

  Args:
    summ: `summaries` of the records.

  Returns:
    (profile, dataset, setting, examples, clients, MTSL row) -> ablation -> the
    `v2_analysis.claim` of the ablated row minus the MTSL row, with 'accuracy' (the
    ablated row's t-interval), 'diverged' (its seeds that diverged, left out of the
    paired test) and 'identical' (True when every paired seed's accuracy equals the MTSL
    row's: the ablation changed nothing, e.g. data-size weights where every client holds
    the same number of examples).
  """
  out = collections.defaultdict(dict)
  for key, s in summ.items():
    ablation = grid.ablation_of(key[5])
    if ablation is None:
      continue
    mtsl = (*key[:5], grid.base_method(key[5]))
    if mtsl not in summ:
      continue
    c = v2_analysis.claim(s, summ[mtsl])
    identical = bool(c["seeds"]) and all(
        s["final_mean"][seed] == summ[mtsl]["final_mean"][seed] for seed in c["seeds"])
    out[mtsl][ablation] = dict(c, accuracy=s["accuracy"], diverged=len(s["diverged"]),
                               identical=identical)
  return dict(out)


def model_config(profile: str, dataset: str) -> ml_collections.ConfigDict | None:
  """The `model` section a profile trains on a dataset (None: an unknown profile)."""
  if profile not in grid.PROFILES:
    return None
  model = config_base.base_config().model
  model.update(grid.model_of(dataset, grid.PROFILES[profile].model))
  return model


def cut_table(profile: str, dataset: str) -> dict[str, cut_costs.SideCosts]:
  """Each cut's division of the model a profile trains on a dataset, for the cuts it runs.

  Args:
    profile: a key of grid.PROFILES (another name gives an empty table).
    dataset: a key of grid.DATASETS.

  Returns:
    Cut name -> `cut_costs.SideCosts` of one client and the server, for every cut whose
    MTSL row is among the profile's methods.
  """
  model = model_config(profile, dataset)
  if model is None:
    return {}
  if dataset == "synthetic":
    shape, classes = v2_analysis.input_shape("synthetic")
  else:
    shape, classes = IMAGE_SHAPES[dataset], v2_analysis.IMAGE_CLASSES
  costs = cut_costs.block_costs(model, shape, classes)
  return {name: cut_costs.side_costs(costs, cut.overrides["split.client_bottom_blocks"],
                                     cut.overrides["split.client_top_blocks"])
          for name, cut in grid.CUTS.items()
          if f"mtsl_{name}" in grid.PROFILES[profile].methods}


def model_text(profile: str, dataset: str) -> str:
  """The model of a profile on a dataset in words, e.g. 'MLP 784-100-100-10'."""
  model = model_config(profile, dataset)
  if model is None:
    return "unknown profile"
  if model.name == "mlp":
    inputs = {"synthetic": "60", "cifar10": "3072"}.get(dataset, "784")
    return f"MLP {inputs}-{'-'.join(map(str, model.hidden_sizes))}-10"
  return (f"CNN conv5x5 {' + conv5x5 '.join(map(str, model.cnn_features))}, dense "
          f"{model.cnn_dense}, head")


def mean_train_examples(methods: dict[str, dict]) -> float | None:
  """The mean train examples per client of a cell's runs (equal for every method)."""
  values = [r["train_examples"]["mean"] for s in methods.values() for r in s["runs"]
            if r.get("train_examples")]
  return sum(values) / len(values) if values else None
