"""Runs the comparison's phases and appends one compact record per run.

Phases, in order (each skips the runs already in the results file, so an interrupted
reproduction resumes where it stopped):

  * tune: for every (dataset, method) and every learning rate of `grid.LR_GRID`, seed 0
    on the dataset's `tune_setting`, evaluated on the validation split;
  * main: every (dataset, setting, method) with the tuned learning rate, `grid.SEEDS`
    trained as one vmapped program (`seed_batch.train_seeds`), evaluated on the test set;
  * noise: the tuning setting of the noise dataset with per-client feature noise and
    label noise at `grid.NOISE` levels, same seeds and learning rates.

Per-run workdirs (metrics, checkpoints) go under a scratch directory that is not kept;
the records hold what the report needs.
"""

import dataclasses
import os
import pathlib
import time
from typing import Sequence

import jax

from mtsl_jax import loop, seed_batch
from mtsl_jax.comparison import analysis, grid, records


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where the comparison reads and writes.

  Attributes:
    results: the JSONL of run records.
    scratch: directory for the runs' workdirs.
    tfds_data_dir: TFDS data_dir ('' = TFDS's default).
    npz_dir: directory of the npz files (the CIFAR-10 subset check).
  """
  results: pathlib.Path
  scratch: pathlib.Path
  tfds_data_dir: str = ""
  npz_dir: str = ""


def _run_group(paths: Paths, *, phase: str, dataset: str, setting: str, method: str,
               lr: float, seeds: Sequence[int], noise: tuple[str, float] | None = None,
               budget_steps: int | None = None, fallback_from: float | None = None,
               verbose: bool = True) -> list[dict]:
  """Trains one (phase, dataset, setting, noise, method, lr) for `seeds`; records them.

  Divergence is a result, not a reason to stop the reproduction. Since the vmapped seeds
  share one loop, one diverging seed stops its group: the seeds are then rerun one by
  one, so only the seeds that diverge are marked. Outside tuning, a seed that diverges
  at the tuned rate is recorded as diverged and rerun at the next smaller rate of the
  grid (recorded with `lr_fallback_from`); the report counts both.

  Returns:
    The new records (the final ones of each seed).
  """
  out = records.ResultsFile(paths.results)
  base = {"phase": phase, "dataset": dataset, "setting": setting, "method": method,
          "lr": lr, "noise": list(noise) if noise else None, "lr_fallback_from": fallback_from}
  done = {records.run_key(r): r for r in out.load()}
  todo = [s for s in seeds if records.run_key(dict(base, seed=s)) not in done]
  again = dict(phase=phase, dataset=dataset, setting=setting, method=method, noise=noise,
               budget_steps=budget_steps, verbose=verbose)
  smaller = [g for g in grid.LR_GRID if g < lr]
  if not todo:  # all recorded; finish fallbacks an interruption may have left undone
    diverged = [s for s in seeds if done[records.run_key(dict(base, seed=s))]["final"] is None]
    if diverged and phase != "tune" and smaller:
      return _run_group(paths, lr=max(smaller), seeds=diverged,
                        fallback_from=fallback_from or lr, **again)
    return []
  config = grid.make_config(dataset, setting, method, lr, tune=phase == "tune", noise=noise,
                            budget_steps=budget_steps, tfds_data_dir=paths.tfds_data_dir,
                            npz_dir=paths.npz_dir)
  noise_part = f"_{noise[0]}={noise[1]:g}" if noise else ""
  group = paths.scratch / phase / dataset / f"{setting}{noise_part}" / method / f"lr={lr:g}"
  workdirs = [group / f"seed={s}" for s in todo]
  start = time.perf_counter()
  per = grid.METHODS[method].client_steps_per_step
  # The wall time means little without the machine and how busy it was.
  common = dict(num_steps=config.num_steps, budget_client_steps=config.num_steps * per,
                batch_size=config.batch_size, seeds_in_group=len(todo),
                device=f"{jax.default_backend()}: {jax.devices()[0].device_kind}",
                cpus=os.cpu_count(), load_1min=round(os.getloadavg()[0], 2))
  try:
    results = seed_batch.train_seeds(config, todo, workdirs, allow_single=True,
                                     group_dir=group / f"seed_group={','.join(map(str, todo))}")
  except loop.NonFiniteError as e:
    # Only runs trained on their own raise (seeds that could not share a program); in a
    # group a diverged seed is frozen and reported in its result.
    if len(todo) > 1:
      if verbose:
        print(f"[{phase}] {dataset}/{setting}{noise_part} {method} lr={lr:g}: a seed "
              "diverged; rerunning the seeds one by one", flush=True)
      return [r for s in todo for r in _run_group(paths, lr=lr, seeds=(s,),
                                                  fallback_from=fallback_from, **again)]
    results = [None]
    failure = str(e).splitlines()[0]
  wall = round(time.perf_counter() - start, 2)
  new = []
  for s, w, result in zip(todo, workdirs, results):
    message = failure if result is None else result.diverged
    if message is not None:
      new.append(dict(base, seed=s, diverged=message.splitlines()[0], curve=None, final=None,
                      wall_seconds_group=wall, **common))
    else:
      new.append(dict(base, seed=s, diverged=None, wall_seconds_group=wall, **common,
                      **records.read_run(w, per)))
  out.append(new)
  if verbose:
    accs = " ".join("diverged" if r["final"] is None else f"{r['final']['accuracy_mean']:.3f}"
                    for r in new)
    print(f"[{phase}] {dataset}/{setting}{noise_part} {method} lr={lr:g} seeds={todo}: "
          f"acc {accs} ({time.perf_counter() - start:.0f} s)", flush=True)
  diverged = [r["seed"] for r in new if r["final"] is None]
  if diverged and phase != "tune" and smaller:
    return new + _run_group(paths, lr=max(smaller), seeds=diverged,
                            fallback_from=fallback_from or lr, **again)
  return new


def run_tuning(paths: Paths, datasets: Sequence[str], methods: Sequence[str],
               budget_steps: int | None = None) -> dict[tuple[str, str], float]:
  """The tune phase; returns the tuned learning rates (see `analysis.tuned_learning_rates`)."""
  for dataset in datasets:
    spec = grid.DATASETS[dataset]
    for method in methods:
      for lr in grid.LR_GRID:
        _run_group(paths, phase="tune", dataset=dataset, setting=spec.tune_setting,
                   method=method, lr=lr, seeds=(0,), budget_steps=budget_steps)
  return analysis.tuned_learning_rates(records.ResultsFile(paths.results).load())


def run_main(paths: Paths, datasets: Sequence[str], methods: Sequence[str],
             lrs: dict[tuple[str, str], float], seeds: Sequence[int] = grid.SEEDS,
             budget_steps: int | None = None) -> None:
  """The main phase: every setting of every dataset, every method, all seeds."""
  for dataset in datasets:
    for setting in grid.DATASETS[dataset].settings:
      for method in methods:
        _run_group(paths, phase="main", dataset=dataset, setting=setting, method=method,
                   lr=lrs[(dataset, method)], seeds=seeds, budget_steps=budget_steps)


def run_noise(paths: Paths, dataset: str, methods: Sequence[str],
              lrs: dict[tuple[str, str], float], seeds: Sequence[int] = grid.SEEDS,
              levels: dict[str, Sequence[float]] | None = None,
              budget_steps: int | None = None) -> None:
  """The noise phase on `dataset`'s tuning setting (noise level 0 is its main run)."""
  setting = grid.DATASETS[dataset].tune_setting
  for field, values in (levels or grid.NOISE).items():
    for level in values:
      for method in methods:
        _run_group(paths, phase="noise", dataset=dataset, setting=setting, method=method,
                   lr=lrs[(dataset, method)], seeds=seeds, noise=(field, level),
                   budget_steps=budget_steps)


def preflight(datasets: Sequence[str], methods: Sequence[str], noise_dataset: str | None,
              budget_steps: int | None = None) -> int:
  """Builds (and so validates) the config of every run before anything trains.

  Args:
    datasets: keys of grid.DATASETS.
    methods: keys of grid.METHODS.
    noise_dataset: the dataset of the noise phase, or None.
    budget_steps: the budget override, if any.

  Returns:
    The number of runs (seeds counted) the phases will make, at most.

  Raises:
    validation.ConfigError: naming the first bad name or budget.
  """
  runs = 0
  for dataset in datasets + ([noise_dataset] if noise_dataset else []):
    if dataset not in grid.DATASETS:
      grid.make_config(dataset, "iid", "fedavg", 0.1)  # raises the named error
  for dataset in datasets:
    spec = grid.DATASETS[dataset]
    for method in methods:
      for setting in spec.settings:
        grid.make_config(dataset, setting, method, grid.LR_GRID[0], budget_steps=budget_steps)
      runs += len(grid.LR_GRID) + len(spec.settings) * len(grid.SEEDS)
  if noise_dataset:
    runs += len(methods) * sum(map(len, grid.NOISE.values())) * len(grid.SEEDS)
  return runs
