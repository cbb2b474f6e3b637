"""Runs the comparison v2 (tuning on 2-D grids, then the main cells) into its records.

Phases, each resuming from the records (an interrupted run, or a later session, goes on
where the last one stopped; nothing recorded is trained again):

  * tune: per (dataset, method) the 2-D learning-rate grid (`v2_grid.axes_of`) on the
    dataset's tuning setting, seed 0, evaluated on the validation split, trained with the
    one-program learning-rate grid (`lr_grid.run_grid`: the points of a chunk are one
    vmapped program with a divergence guard per point). While the best point lies on an
    edge of an axis, that axis grows by a half decade in that direction (at most
    `v2_grid.MAX_EXTENSIONS` times), so the chosen point is interior or the report says
    it is not;
  * main: every (dataset, setting, method) at its tuned point, the profile's seeds as one
    vmapped program (`seed_batch.train_seeds`), evaluated on the test set `v2_grid.EVALS`
    times over the budget.

Every record (`v2_records`) says where it was computed and under which profile.
"""

import dataclasses
import os
import pathlib
import platform
import time
from typing import Sequence

import jax
import numpy as np

from mtsl_jax import loop, lr_grid, seed_batch, train
from mtsl_jax.comparison import exchanges, records, v2_grid, v2_records


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where the comparison v2 reads and writes.

  Attributes:
    results: the JSONL of run records (append-only).
    scratch: directory for the runs' workdirs (not kept).
    tfds_data_dir: TFDS data_dir ('' = TFDS's default).
  """
  results: pathlib.Path
  scratch: pathlib.Path
  tfds_data_dir: str = ""


def where_computed(replicas: int) -> dict:
  """The machine a record was computed on (backend, device, cores, host, load)."""
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "cpus": os.cpu_count(), "host": platform.node(), "jax": jax.__version__,
          "replicas_in_program": replicas, "load_1min": round(os.getloadavg()[0], 2)}


def compute_seconds_per_step(workdir: pathlib.Path, replicas: int) -> float | None:
  """Measured compute seconds per loop step of one run, from its timing.jsonl.

  The median over the timed chunks after the first (which holds the compilation),
  divided by the replicas trained in the same program (on a CPU they share its cores).
  """
  path = workdir / "timing.jsonl"
  if not path.exists():
    return None
  rates = [r["steps_per_second"] for r in records.ResultsFile(path).load()]
  rates = rates[1:] or rates
  return float(1.0 / np.median(rates) / replicas) if rates else None


# ---- tuning ------------------------------------------------------------------------------


def tune_method(paths: Paths, profile_name: str, dataset: str, method: str, *,
                chunk_size: int = 0, verbose: bool = True) -> dict:
  """Tunes one method on one dataset; returns its chosen point.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of v2_grid.PROFILES.
    dataset, method: keys of v2_grid.DATASETS and v2_grid.METHODS.
    chunk_size: grid points per vmapped program (0: all points of a round at once).
    verbose: print one line per round.

  Returns:
    `v2_records.choose_point` of the method's tuning records.
  """
  profile = v2_grid.PROFILES[profile_name]
  setting = v2_grid.DATASETS[dataset].tune_setting
  _, tune_steps = v2_grid.budgets(profile, dataset)
  server_axis, client_axis = (list(a) for a in v2_grid.axes_of(method))
  local = v2_grid.METHODS[method].axes == "local"
  out = records.ResultsFile(paths.results)
  base = dict(phase="tune", profile=profile_name, dataset=dataset, setting=setting,
              method=method, noise=None, seed=0)
  for round_ in range(4 * v2_grid.MAX_EXTENSIONS + 1):
    points = [(None if local else v2_grid.lr_value(s), v2_grid.lr_value(c))
              for s in server_axis for c in client_axis]
    done = {v2_records.key(r) for r in out.load()}
    todo = [p for p in points
            if v2_records.key(dict(base, server_lr=p[0], client_lr=p[1])) not in done]
    if todo:
      _train_tuning_points(paths, out, base, todo, tune_steps, profile, chunk_size, round_,
                           verbose)
    mine = v2_records.select(out.load(), phase="tune", profile=profile_name,
                             dataset=dataset, method=method)
    chosen = v2_records.choose_point(mine, server_axis=None if local else
                                     [v2_grid.lr_value(s) for s in server_axis],
                                     client_axis=[v2_grid.lr_value(c) for c in client_axis])
    grown = extend_axes(chosen, server_axis, client_axis, v2_grid.axes_of(method), local)
    if not grown:
      return chosen
    if verbose:
      print(f"[tune] {dataset} {method}: best point on an edge ({chosen['edges']}); "
            f"axis extended", flush=True)
  return chosen


def extend_axes(chosen: dict, server_axis: list, client_axis: list, start: tuple,
                local: bool) -> bool:
  """Grows the axes in place where the chosen point lies on an edge; whether any grew.

  Args:
    chosen: `v2_records.choose_point`'s result (its 'edges').
    server_axis, client_axis: the grid's current axes (exponents), grown in place by
      `v2_grid.AXIS_STEP` at an edge, at most `v2_grid.MAX_EXTENSIONS` times per side.
    start: the (server, client) axes the grid started from.
    local: the method has one rate (no server axis).

  Returns:
    Whether an axis grew (the grid then needs another round).
  """
  grown = False
  for axis, start_axis, side in ((client_axis, start[1], "client"),
                                 (server_axis, start[0], "server")):
    if side == "server" and local:
      continue
    for edge in chosen["edges"]:
      if not edge.startswith(side):
        continue
      low = edge.endswith("low")
      extensions = (min(start_axis) - min(axis) if low else max(axis) - max(start_axis))
      if extensions / v2_grid.AXIS_STEP >= v2_grid.MAX_EXTENSIONS - 1e-9:
        continue
      if low:
        axis.insert(0, min(axis) - v2_grid.AXIS_STEP)
      else:
        axis.append(max(axis) + v2_grid.AXIS_STEP)
      grown = True
  return grown


def train_tuning_grid(config, todo: Sequence[tuple], server: Sequence[float],
                      workdir: pathlib.Path, base: dict, per: int, reductions: Sequence[str],
                      chunk_size: int = 0) -> list[dict]:
  """Trains tuning points as one (chunked) learning-rate grid program; their records.

  Args:
    config: the tuning config of the first point (the grid sets each point's rates).
    todo: the points as (server_lr or None, client_lr), as recorded.
    server: the server rate each point trains with (a one-rate method's placeholder).
    workdir: the grid's directory (resumable).
    base: the records' identity fields but the rates.
    per: client steps per loop step.
    reductions: the profile's reductions.
    chunk_size: points per vmapped program (0: all).

  Returns:
    One record per point: a diverged point has `diverged` set and no curve.
  """
  every = config.eval_every
  losses, _ = lr_grid.run_grid(config, server, [c for _, c in todo], workdir,
                               eval_every=every, num_evals=config.num_steps // every,
                               chunk_size=chunk_size)
  group = len(todo) if chunk_size <= 0 else min(chunk_size, len(todo))
  new = []
  for i, (s, c) in enumerate(todo):
    point_dir = workdir / lr_grid.point_name(server[i], c)
    rec = dict(base, server_lr=s, client_lr=c, budget_client_steps=config.num_steps * per,
               num_steps=config.num_steps, eval_every=every, client_steps_per_step=per,
               batch_size=config.batch_size, reductions=list(reductions),
               where=where_computed(group),
               compute_seconds_per_step=compute_seconds_per_step(point_dir, group))
    if not np.all(np.isfinite(losses[i])):
      rec.update(diverged="non-finite loss", curve=None, final=None)
    else:
      rec.update(diverged=None, **records.read_run(point_dir, per))
    new.append(rec)
  return new


def _train_tuning_points(paths, out, base, todo, tune_steps, profile, chunk_size, round_,
                         verbose):
  """Trains the missing points of a tuning grid as one (chunked) lr grid; records them."""
  dataset, method = base["dataset"], base["method"]
  server = [1.0 if s is None else s for s, _ in todo]
  client = [c for _, c in todo]
  config = v2_grid.make_config(dataset, base["setting"], method, server[0], client[0],
                               tune=True, client_steps=tune_steps, evals=v2_grid.TUNE_EVALS,
                               max_eval_examples=profile.max_eval_examples,
                               eval_batch_size=profile.eval_batch_size,
                               tfds_data_dir=paths.tfds_data_dir)
  workdir = paths.scratch / base["profile"] / "tune" / dataset / method / f"round={round_}"
  start = time.perf_counter()
  new = train_tuning_grid(config, todo, server, workdir, dict(base, tuning_round=round_),
                          v2_grid.client_steps_per_step(method, dataset), profile.reductions,
                          chunk_size)
  out.append(new)
  if verbose:
    print(f"[tune] {dataset} {method} round {round_}: {len(todo)} points "
          f"({time.perf_counter() - start:.0f} s)", flush=True)


# ---- main cells --------------------------------------------------------------------------


def run_cell(paths: Paths, profile_name: str, dataset: str, setting: str, method: str,
             point: dict, *, noise: str | None = None, verbose: bool = True) -> list[dict]:
  """Trains one main cell (all its unrecorded seeds as one program) and records it.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of v2_grid.PROFILES.
    dataset, setting, method: the cell.
    point: the tuned point ({'server_lr', 'client_lr'}).
    noise: a key of v2_grid.NOISE, or None.
    verbose: print one line per cell.

  Returns:
    The new records.
  """
  profile = v2_grid.PROFILES[profile_name]
  max_steps, _ = v2_grid.budgets(profile, dataset)
  out = records.ResultsFile(paths.results)
  base = dict(phase="main", profile=profile_name, dataset=dataset, setting=setting,
              method=method, noise=noise, server_lr=point["server_lr"],
              client_lr=point["client_lr"])
  done = {v2_records.key(r) for r in out.load()}
  todo = [s for s in profile.seeds if v2_records.key(dict(base, seed=s)) not in done]
  if not todo:
    return []
  config = v2_grid.make_config(dataset, setting, method, point["server_lr"] or 1.0,
                               point["client_lr"], tune=False, client_steps=max_steps,
                               evals=v2_grid.EVALS, noise=noise,
                               max_eval_examples=profile.max_eval_examples,
                               eval_batch_size=profile.eval_batch_size,
                               tfds_data_dir=paths.tfds_data_dir)
  cell_name = f"{setting}_{noise}" if noise else setting
  cell = paths.scratch / profile_name / "main" / dataset / cell_name / method
  workdirs = [cell / f"seed={s}" for s in todo]
  start = time.perf_counter()
  per = v2_grid.client_steps_per_step(method, dataset)
  k = v2_grid.local_steps_value(method, dataset) if "splitfed" in method else None

  def record(seed, workdir, diverged, messages, replicas):
    rec = dict(base, seed=seed, budget_client_steps=config.num_steps * per,
               num_steps=config.num_steps, eval_every=config.eval_every,
               client_steps_per_step=per, batch_size=config.batch_size,
               exchanges=exchanges.step_exchanges(messages, k),
               reductions=list(profile.reductions), where=where_computed(replicas),
               compute_seconds_per_step=compute_seconds_per_step(workdir, replicas))
    if diverged is not None:
      return dict(rec, diverged=diverged.splitlines()[0], curve=None, final=None)
    return dict(rec, diverged=None, **records.read_run(workdir, per))

  new = []
  if profile.vmap_seeds:
    results = seed_batch.train_seeds(config, todo, workdirs, allow_single=True,
                                     group_dir=cell / f"seeds={','.join(map(str, todo))}")
    new = [record(s, w, r.diverged, r.algorithm.traffic.messages, len(todo))
           for s, w, r in zip(todo, workdirs, results)]
    out.append(new)
  else:  # one seed after another, each recorded as it finishes
    for s, w in zip(todo, workdirs):
      try:
        result = train.train_and_evaluate(seed_batch.seed_configs(config, [s])[0], w,
                                          verbose=False, federations={})
        diverged, messages = None, result.algorithm.traffic.messages
      except loop.NonFiniteError as e:  # divergence is a result, not a reason to stop
        diverged, messages = str(e), train.prepare_run(config)[1].traffic.messages
      new.append(record(s, w, diverged, messages, 1))
      out.append(new[-1:])
  if verbose:
    accs = " ".join("diverged" if r["final"] is None else f"{r['final']['accuracy_mean']:.3f}"
                    for r in new)
    print(f"[main] {dataset}/{setting} {method} seeds={todo}: acc {accs} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
  return new


def run_profile(paths: Paths, profile_name: str, phases: Sequence[str] = ("tune", "main"),
                *, datasets: Sequence[str] | None = None, methods: Sequence[str] | None = None,
                chunk_size: int = 0, verbose: bool = True) -> None:
  """Runs a profile's phases, one method at a time: its tuning, then its main cells.

  Method by method (in the profile's order, MTSL first), so that an interrupted session
  leaves whole rows of the comparison rather than a finished tuning and no main cell.

  Args:
    paths: where records and workdirs go.
    profile_name: a key of v2_grid.PROFILES.
    phases: any of 'tune', 'main'.
    datasets, methods: subsets of the profile's (None: all of them).
    chunk_size: grid points per vmapped tuning program (0: the profile's `tune_chunk`).
    verbose: print progress lines.
  """
  profile = v2_grid.PROFILES[profile_name]
  chunk_size = chunk_size or profile.tune_chunk
  for dataset in datasets or profile.datasets:
    spec = v2_grid.DATASETS[dataset]
    for method in methods or profile.methods:
      if "tune" in phases:
        tune_method(paths, profile_name, dataset, method, chunk_size=chunk_size,
                    verbose=verbose)
      if "main" not in phases:
        continue
      point = v2_records.tuned_point(records.ResultsFile(paths.results).load(), profile_name,
                                     dataset, method)
      if point is None:
        print(f"[main] {dataset} {method}: not tuned yet; skipped", flush=True)
        continue
      cells = [(s, None) for s in v2_grid.settings_of(profile, dataset)]
      if profile.noise and spec.noise:
        cells += [(spec.tune_setting, noise) for noise in v2_grid.NOISE]
      for setting, noise in cells:
        run_cell(paths, profile_name, dataset, setting, method, point, noise=noise,
                 verbose=verbose)
