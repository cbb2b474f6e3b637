"""Runs the server map (tuning, the map's cells, the ablations) into its records.

Phases, each resuming from the records (nothing recorded is trained again):

  * tune: per (dataset, method) the comparison v2's 2-D learning-rate grid at the
    profile's tuning regime, seed 0, on the validation split, trained as one vmapped
    program per chunk (`lr_grid.run_grid`), an axis extended while the best point lies on
    its edge (`v2_runner.extend_axes`);
  * map: every (dataset, setting, examples, clients, method) at the method's tuned point,
    the profile's seeds as one vmapped program where they share one
    (`seed_batch.train_seeds`; else one after another);
  * ablations: the profile's MTSL rows with each ablation at its ablation regimes, at
    the MTSL row's tuned point;
  * retune: the check of tuning once. At each of the profile's `retune_regimes` (first
    setting) every method the verdicts compare is tuned again at that cell ('tune_cell'
    records, same grids and edge rule) and run with the profile's seeds at its own point
    ('retuned' records), so the document can say which verdicts the tuned-once rates
    decide.

One JSON line per run in the records (`KEY_FIELDS` identify it); every record says where
it was computed and under which profile and reductions.
"""

import time
from typing import Sequence

import numpy as np

from mtsl_jax import data, seed_batch
from mtsl_jax.comparison import records, v2_grid, v2_records, v2_runner
from mtsl_jax.server_map import grid

KEY_FIELDS = ("phase", "profile", "dataset", "setting", "examples", "clients", "method",
              "server_lr", "client_lr", "seed")
PHASES = ("tune", "map", "ablations", "retune")
# The methods a verdict compares (centralized is a reference, not a comparison).
VERDICT_METHODS = tuple(m for m in grid.METHODS if m != "centralized")


# Where the map reads and writes: records, scratch workdirs, TFDS data_dir.
Paths = v2_runner.Paths


def key(record: dict) -> tuple:
  """A map record's identity."""
  return v2_records.key(record, KEY_FIELDS)


def tuned_point(recs: Sequence[dict], profile: str, dataset: str, method: str) -> dict | None:
  """A method's chosen tuning point on `dataset`, or None while it is untuned."""
  return v2_records.tuned_point(recs, profile, dataset, method, KEY_FIELDS)


def cell_tuned_point(recs: Sequence[dict], profile: str, dataset: str, method: str,
                     examples: int, clients: int) -> dict | None:
  """A method's point tuned at one cell ('tune_cell' records), or None while untuned."""
  return v2_records.tuned_point(recs, profile, dataset, method, KEY_FIELDS,
                                phase="tune_cell", examples=examples, clients=clients)


# ---- tuning ------------------------------------------------------------------------------


def tune_method(paths: Paths, profile_name: str, dataset: str, method: str, *,
                regime: tuple[int, int] | None = None, verbose: bool = True) -> dict:
  """Tunes one method on one dataset at one regime; its chosen point.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of grid.PROFILES.
    dataset, method: keys of grid.DATASETS and grid.METHODS.
    regime: (examples, clients) of a cell tuned for the tuned-once check ('tune_cell'
      records); None: the profile's tuning regime ('tune' records, the map's points).
    verbose: print one line per round.

  Returns:
    `v2_records.choose_point` of the method's tuning records at that regime.
  """
  profile = grid.PROFILES[profile_name]
  setting = profile.settings[0]
  phase = "tune" if regime is None else "tune_cell"
  examples, clients = regime or profile.tune_regime
  start_axes = v2_grid.axes_of_kind(grid.METHODS[method].axes)
  server_axis, client_axis = (list(a) for a in start_axes)
  local = grid.METHODS[method].axes == "local"
  out = records.ResultsFile(paths.results)
  base = dict(phase=phase, profile=profile_name, dataset=dataset, setting=setting,
              examples=examples, clients=clients, method=method, seed=0)
  for round_ in range(4 * v2_grid.MAX_EXTENSIONS + 1):
    points = [(None if local else v2_grid.lr_value(s), v2_grid.lr_value(c))
              for s in server_axis for c in client_axis]
    done = {key(r) for r in out.load()}
    todo = [p for p in points if key(dict(base, server_lr=p[0], client_lr=p[1])) not in done]
    if todo:
      _train_tuning_points(paths, out, base, todo, profile, round_, verbose)
    mine = v2_records.select(out.load(), KEY_FIELDS, phase=phase, profile=profile_name,
                             dataset=dataset, method=method, examples=examples,
                             clients=clients)
    chosen = v2_records.choose_point(
        mine, server_axis=None if local else [v2_grid.lr_value(s) for s in server_axis],
        client_axis=[v2_grid.lr_value(c) for c in client_axis])
    if not v2_runner.extend_axes(chosen, server_axis, client_axis, start_axes, local):
      return chosen
    if verbose:
      print(f"[{phase}] {dataset} {method}: best point on an edge ({chosen['edges']}); "
            "axis extended", flush=True)
  return chosen


def _train_tuning_points(paths, out, base, todo, profile, round_, verbose):
  """Trains the missing points of a tuning grid as one lr grid program; records them."""
  dataset, method = base["dataset"], base["method"]
  # A one-rate method's points carry their rate on both sides (centralized trains its one
  # model with the server optimizer; local-only reads only the client's).
  server = [c if s is None else s for s, c in todo]
  client = [c for _, c in todo]
  config = grid.make_config(dataset, base["setting"], method, server[0], client[0],
                            examples=base["examples"], clients=base["clients"], tune=True,
                            client_steps=profile.tune_client_steps, evals=grid.TUNE_EVALS,
                            model=profile.model, tfds_data_dir=paths.tfds_data_dir)
  workdir = (paths.scratch / base["profile"] / base["phase"] / dataset /
             f"examples={base['examples']},clients={base['clients']}" / method /
             f"round={round_}")
  start = time.perf_counter()
  new = v2_runner.train_tuning_grid(config, todo, server, workdir,
                                    dict(base, tuning_round=round_),
                                    grid.client_steps_per_step(method), profile.reductions)
  out.append(new)
  if verbose:
    print(f"[{base['phase']}] {dataset} {method} round {round_}: {len(todo)} points "
          f"({time.perf_counter() - start:.0f} s)", flush=True)


# ---- map and ablation cells --------------------------------------------------------------


def train_counts(config, seed: int, cache: dict) -> dict:
  """{'mean', 'min', 'max'} of the clients' train examples under `config` and `seed`.

  The partition depends on the data section and the seed only, so one federation per
  (data section, seed) serves every method of a cell (`cache`).
  """
  cache_key = (config.data.to_json(sort_keys=True), seed)
  if cache_key not in cache:
    counts = np.asarray(data.build_federation(config.data, seed).train_counts)
    cache[cache_key] = {"mean": round(float(counts.mean()), 1), "min": int(counts.min()),
                        "max": int(counts.max())}
  return cache[cache_key]


def run_cell(paths: Paths, profile_name: str, phase: str, dataset: str, setting: str,
             examples: int, clients: int, method: str, point: dict, *,
             counts_cache: dict | None = None, verbose: bool = True) -> list[dict]:
  """Trains one cell (its unrecorded seeds, vmapped where they share a program); records it.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of grid.PROFILES.
    phase: 'map', 'ablations' or 'retuned'.
    dataset, setting, examples, clients, method: the cell.
    point: the tuned point ({'server_lr', 'client_lr'}).
    counts_cache: federations' train counts by (data section, seed), shared across cells.
    verbose: print one line per cell.

  Returns:
    The new records.
  """
  profile = grid.PROFILES[profile_name]
  out = records.ResultsFile(paths.results)
  base = dict(phase=phase, profile=profile_name, dataset=dataset, setting=setting,
              examples=examples, clients=clients, method=method,
              server_lr=point["server_lr"], client_lr=point["client_lr"])
  done = {key(r) for r in out.load()}
  todo = [s for s in profile.seeds if key(dict(base, seed=s)) not in done]
  if not todo:
    return []
  config = grid.make_config(dataset, setting, method, point["server_lr"] or 1.0,
                            point["client_lr"], examples=examples, clients=clients,
                            tune=False, client_steps=profile.max_client_steps,
                            evals=grid.EVALS, model=profile.model,
                            tfds_data_dir=paths.tfds_data_dir)
  # The rates are part of the path: a re-tuned method trains its cells afresh.
  cell = (paths.scratch / profile_name / phase / dataset / setting /
          f"examples={examples},clients={clients}" / method /
          f"lr={point['server_lr']},{point['client_lr']}")
  workdirs = [cell / f"seed={s}" for s in todo]
  start = time.perf_counter()
  # A diverged seed is a result of the cell (recorded as such), not a reason to stop.
  results = seed_batch.train_seeds(config, todo, workdirs, allow_single=True,
                                   group_dir=cell / f"seeds={','.join(map(str, todo))}",
                                   record_divergence=True)
  per = grid.client_steps_per_step(method)
  cache = {} if counts_cache is None else counts_cache
  new = []
  for s, w, r in zip(todo, workdirs, results):
    rec = dict(base, seed=s, budget_client_steps=config.num_steps * per,
               num_steps=config.num_steps, eval_every=config.eval_every,
               client_steps_per_step=per, train_examples=train_counts(config, s, cache),
               reductions=list(profile.reductions),
               where=v2_runner.where_computed(len(todo)),
               compute_seconds_per_step=v2_runner.compute_seconds_per_step(w, len(todo)))
    if r.diverged is not None:
      rec.update(diverged=r.diverged.splitlines()[0], curve=None, final=None)
    else:
      rec.update(diverged=None, **records.read_run(w, per))
    new.append(rec)
  out.append(new)
  if verbose:
    accs = " ".join("diverged" if r["final"] is None else f"{r['final']['accuracy_mean']:.3f}"
                    for r in new)
    print(f"[{phase}] {dataset}/{setting} n={examples or 'all'} M={clients} {method} "
          f"seeds={todo}: acc {accs} ({time.perf_counter() - start:.0f} s)", flush=True)
  return new


def run_profile(paths: Paths, profile_name: str, phases: Sequence[str] = PHASES, *,
                datasets: Sequence[str] | None = None, settings: Sequence[str] | None = None,
                methods: Sequence[str] | None = None, verbose: bool = True) -> None:
  """Runs a profile's phases, dataset by dataset and setting by setting.

  Within a setting the cells run smallest clients first, every method of a cell before
  the next cell, so that an interrupted session leaves whole cells of the map.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of grid.PROFILES.
    phases: any of PHASES.
    datasets, settings, methods: subsets of the profile's (None: all of them).
    verbose: print progress lines.
  """
  profile = grid.PROFILES[profile_name]
  methods = tuple(methods or profile.methods)
  cache: dict = {}
  for dataset in datasets or profile.datasets:
    if "tune" in phases:
      for method in methods:
        tune_method(paths, profile_name, dataset, method, verbose=verbose)
    recs = records.ResultsFile(paths.results).load()
    points = {m: tuned_point(recs, profile_name, dataset, m) for m in methods}
    if {"map", "ablations"} & set(phases):
      for m in [m for m, p in points.items() if p is None]:
        print(f"[map] {dataset} {m}: not tuned yet; skipped", flush=True)
    for setting in settings or profile.settings:
      if "map" in phases:
        for examples, clients in grid.regimes(profile, dataset):
          for method in (m for m in methods if points[m] is not None):
            run_cell(paths, profile_name, "map", dataset, setting, examples, clients,
                     method, points[method], counts_cache=cache, verbose=verbose)
      if "ablations" in phases:
        for examples, clients in profile.ablation_regimes:
          for cut in profile.ablation_cuts:
            mtsl = f"mtsl_{cut}"
            if points.get(mtsl) is None:
              continue
            for ablation in grid.ABLATIONS:
              run_cell(paths, profile_name, "ablations", dataset, setting, examples,
                       clients, f"{mtsl}{grid.ABLATION_SEPARATOR}{ablation}",
                       points[mtsl], counts_cache=cache, verbose=verbose)
    if "retune" in phases:
      retune_cells(paths, profile_name, dataset,
                   [m for m in methods if m in VERDICT_METHODS], cache, verbose)


def retune_cells(paths: Paths, profile_name: str, dataset: str, methods: Sequence[str],
                 cache: dict, verbose: bool) -> None:
  """The tuned-once check on one dataset: each method tuned at each of the profile's
  `retune_regimes` (first setting), then run there with the profile's seeds.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of grid.PROFILES.
    dataset: a key of grid.DATASETS.
    methods: the methods to tune again (those the verdicts compare).
    cache: federations' train counts, shared with the map's cells.
    verbose: print progress lines.
  """
  profile = grid.PROFILES[profile_name]
  for examples, clients in profile.retune_regimes:
    if not grid.runs_in(dataset, examples, clients):
      continue
    for method in methods:
      point = tune_method(paths, profile_name, dataset, method,
                          regime=(examples, clients), verbose=verbose)
      if point["client_lr"] is None:
        print(f"[retuned] {dataset} {method}: every point diverged at the cell; skipped",
              flush=True)
        continue
      run_cell(paths, profile_name, "retuned", dataset, profile.settings[0], examples,
               clients, method, point, counts_cache=cache, verbose=verbose)
