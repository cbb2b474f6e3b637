"""Sweeps: a product over config fields, each run in its own workdir, resumable.

A sweep is a dict `field -> list of values` (dotted config paths; `seed` is a field like
any other). `run_sweep` runs every combination with `train.train_and_evaluate` in
`<sweep_dir>/<run name>/`: a finished run (its `result.json` exists) is skipped, an
interrupted one resumes from its checkpoints, and `<sweep_dir>/summary.csv` gets one row
per run with the overrides and the final metrics.

With `vmap_seeds=True`, combinations that differ only in 'seed' form a group trained as
one vmapped program by `seed_batch.train_seeds` (or one after another when the seeds
cannot share a program, `replicas.same_program`). Every seed still gets its own workdir,
result.json and summary row, exactly as without it (a seed that diverges stops the sweep
with `loop.NonFiniteError` as an ordinary run would, after the other seeds of its group
are recorded); the group's stacked
checkpoints live in `<sweep_dir>/seed_groups/<name>_seeds=<s0,s1,...>/`, so an interrupted
group resumes. Only the seeds without a result.json are grouped on a rerun.
"""

import csv
import itertools
import json
import os
import pathlib
from typing import Any, Callable

import ml_collections
import numpy as np

from mtsl_jax import config_files, loop, seed_batch, train, validation

SUMMARY_FIELDS = ("test/accuracy_mean", "test/accuracy_weighted", "test/accuracy_worst",
                  "test/loss_mean")


def expand(sweep: dict[str, list]) -> list[dict[str, Any]]:
  """All combinations of the sweep's values, in a stable order (last field fastest).

  Args:
    sweep: field -> non-empty list of values.

  Returns:
    A list of override dicts.
  """
  for field, values in sweep.items():
    if not isinstance(values, (list, tuple)) or not values:
      raise validation.ConfigError(field, f"sweep values must be a non-empty list, got {values!r}")
  fields = list(sweep)
  return [dict(zip(fields, combo)) for combo in itertools.product(*(sweep[f] for f in fields))]


def run_name(overrides: dict[str, Any]) -> str:
  """A readable, filesystem-safe directory name for one combination."""
  parts = []
  for field, value in overrides.items():
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    parts.append(f"{field.split('.')[-1]}={text}")
  return "_".join(parts).replace("/", "-").replace(" ", "") or "base"


def _row(overrides: dict, eval_metrics: dict, train_metrics: dict) -> dict:
  row = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in overrides.items()}
  row.update({k: float(eval_metrics[k]) for k in SUMMARY_FIELDS})
  if "comm/total_bytes" in train_metrics:
    row["comm/total_bytes"] = float(train_metrics["comm/total_bytes"])
  return row


def run_sweep(base_config: ml_collections.ConfigDict, sweep: dict[str, list],
              sweep_dir: str | pathlib.Path,
              train_fn: Callable = train.train_and_evaluate,
              vmap_seeds: bool = False) -> list[dict]:
  """Runs (or resumes, or skips) every combination and writes summary.csv.

  All combinations are validated before the first run starts, so a typo in the last
  value does not surface hours in.

  Args:
    base_config: the experiment config the overrides apply to.
    sweep: field -> list of values.
    sweep_dir: directory holding one workdir per run and summary.csv.
    train_fn: the training function (tests pass a counting wrapper); with `vmap_seeds`,
      also the fallback for seeds that cannot share a program, and used for a group
      left with one unfinished seed.
    vmap_seeds: train the seeds of otherwise equal combinations as one vmapped program.

  Returns:
    The summary rows, one per run, in sweep order.
  """
  sweep_dir = pathlib.Path(sweep_dir)
  combos = expand(sweep)
  # A combination is set as a command-line override is: same checks, same messages.
  configs = [config_files.apply_overrides(base_config, o) for o in combos]
  for config in configs:
    validation.validate_config(config)
  rows = [None] * len(combos)
  for group in _groups(combos, vmap_seeds and "seed" in sweep):
    pending = []
    for i in group:
      result_path = sweep_dir / run_name(combos[i]) / "result.json"
      if result_path.exists():
        rows[i] = json.loads(result_path.read_text())
      else:
        pending.append(i)
    if len(pending) > 1:
      seeds = [configs[i].seed for i in pending]
      rest = {k: v for k, v in combos[pending[0]].items() if k != "seed"}
      workdirs = [sweep_dir / run_name(combos[i]) for i in pending]
      print(f"sweep: {', '.join(w.name for w in workdirs)} (seeds vmapped)", flush=True)
      group_dir = (sweep_dir / "seed_groups" /
                   f"{run_name(rest)}_seeds={','.join(map(str, seeds))}")
      results = seed_batch.train_seeds(configs[pending[0]], seeds, workdirs,
                                       group_dir=group_dir, fallback_fn=train_fn)
      for i, result in zip(pending, results):
        if result.diverged is None:
          rows[i] = _finish_run(sweep_dir, combos[i], result)
      for result in results:
        if result.diverged is not None:
          raise loop.NonFiniteError(result.diverged)
    elif pending:
      i = pending[0]
      print(f"sweep: {run_name(combos[i])}", flush=True)
      result = train_fn(configs[i], sweep_dir / run_name(combos[i]), verbose=False)
      rows[i] = _finish_run(sweep_dir, combos[i], result)
  _write_csv(rows, sweep_dir / "summary.csv")
  return rows


def _groups(combos: list[dict], by_seed: bool) -> list[list[int]]:
  """Indices of the combinations run together: equal but for 'seed', or one each."""
  if not by_seed:
    return [[i] for i in range(len(combos))]
  groups = {}
  for i, overrides in enumerate(combos):
    key = json.dumps({k: v for k, v in overrides.items() if k != "seed"}, sort_keys=True,
                     default=str)
    groups.setdefault(key, []).append(i)
  return list(groups.values())


def _finish_run(sweep_dir: pathlib.Path, overrides: dict, result) -> dict:
  """The run's summary row, also written to its result.json (last: it marks it done)."""
  row = _row(overrides, result.eval_metrics, result.train_metrics)
  result_path = sweep_dir / run_name(overrides) / "result.json"
  tmp = result_path.with_suffix(".tmp")
  tmp.write_text(json.dumps(row))
  os.replace(tmp, result_path)  # written last: its presence means the run finished
  return row


def _write_csv(rows: list[dict], path: pathlib.Path) -> None:
  fields = list(dict.fromkeys(k for row in rows for k in row))
  tmp = path.with_suffix(".tmp")
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


def best_run(rows: list[dict], metric: str = "test/accuracy_mean") -> dict:
  """The row with the highest `metric`."""
  return rows[int(np.argmax([row[metric] for row in rows]))]
