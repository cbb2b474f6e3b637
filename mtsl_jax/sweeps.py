"""Sweeps: a product over config fields, each run in its own workdir, resumable.

A sweep is a dict `field -> list of values` (dotted config paths; `seed` is a field like
any other). `run_sweep` runs every combination with `train.train_and_evaluate` in
`<sweep_dir>/<run name>/`: a finished run (its `result.json` exists) is skipped, an
interrupted one resumes from its checkpoints, and `<sweep_dir>/summary.csv` gets one row
per run with the overrides and the final metrics.
"""

import copy
import csv
import itertools
import json
import os
import pathlib
from typing import Any, Callable

import ml_collections
import numpy as np

from mtsl_jax import train, validation

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


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-path overrides set (types checked by ConfigDict).

  Raises:
    validation.ConfigError: a field that does not exist, or a value of the wrong type.
  """
  config = copy.deepcopy(config)
  for field, value in overrides.items():
    *path, leaf = field.split(".")
    section = config
    try:
      for part in path:
        section = section[part]
      if leaf not in section:
        raise KeyError(leaf)
      section[leaf] = tuple(value) if isinstance(value, list) else value
    except (KeyError, AttributeError) as e:
      raise validation.ConfigError(field, "no such field to sweep over") from e
    except TypeError as e:
      raise validation.ConfigError(field, f"sweep value {value!r}: {e}") from e
  return config


def _row(overrides: dict, eval_metrics: dict, train_metrics: dict) -> dict:
  row = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in overrides.items()}
  row.update({k: float(eval_metrics[k]) for k in SUMMARY_FIELDS})
  if "comm/total_bytes" in train_metrics:
    row["comm/total_bytes"] = float(train_metrics["comm/total_bytes"])
  return row


def run_sweep(base_config: ml_collections.ConfigDict, sweep: dict[str, list],
              sweep_dir: str | pathlib.Path,
              train_fn: Callable = train.train_and_evaluate) -> list[dict]:
  """Runs (or resumes, or skips) every combination and writes summary.csv.

  All combinations are validated before the first run starts, so a typo in the last
  value does not surface hours in.

  Args:
    base_config: the experiment config the overrides apply to.
    sweep: field -> list of values.
    sweep_dir: directory holding one workdir per run and summary.csv.
    train_fn: the training function (tests pass a counting wrapper).

  Returns:
    The summary rows, one per run, in sweep order.
  """
  sweep_dir = pathlib.Path(sweep_dir)
  combos = expand(sweep)
  configs = [apply_overrides(base_config, o) for o in combos]
  for config in configs:
    validation.validate_config(config)
  rows = []
  for overrides, config in zip(combos, configs):
    workdir = sweep_dir / run_name(overrides)
    result_path = workdir / "result.json"
    if result_path.exists():
      rows.append(json.loads(result_path.read_text()))
      continue
    print(f"sweep: {workdir.name}", flush=True)
    result = train_fn(config, workdir, verbose=False)
    row = _row(overrides, result.eval_metrics, result.train_metrics)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, result_path)  # written last: its presence means the run finished
    rows.append(row)
  _write_csv(rows, sweep_dir / "summary.csv")
  return rows


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
