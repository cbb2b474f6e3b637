"""The records of the comparison v2, their keys, and the tuned point read off them.

One JSON line per run in `results/v2/runs.jsonl` (append-only, `records.ResultsFile`):

  identity   phase ('tune' | 'main'), profile, dataset, setting, method, noise,
             server_lr (None for local-only), client_lr, seed;
  budget     budget_client_steps, num_steps, eval_every, client_steps_per_step, batch_size;
  result     diverged (None or the first line of the message), curve {client_steps,
             accuracy_mean, accuracy_worst, bytes} and final {accuracy_mean,
             accuracy_worst, accuracy_weighted, accuracy, bytes} (None when diverged);
  cost       exchanges (bytes of each sequential exchange of one loop step, main runs),
             compute_seconds_per_step (measured, per run);
  provenance where (backend, device kind, cores, host, jax version, replicas in the
             program, load), reductions (how the profile departs from the full grid),
             tuning_round (tuning runs).

A tuning run's curve is on the validation split (kept under the 'accuracy' names), a
main run's on the test set.
"""

import json
from typing import Iterable, Sequence

import numpy as np

KEY_FIELDS = ("phase", "profile", "dataset", "setting", "noise", "method", "server_lr",
              "client_lr", "seed")
SCORE_EVALS = 3   # a tuning run's score: the mean of its last 3 evaluations


def key(record: dict, key_fields: Sequence[str] = KEY_FIELDS) -> tuple:
  """The identity of a run: records with equal keys are the same run.

  Args:
    record: a run record.
    key_fields: the fields that identify a run (another study's records have more).
  """
  return tuple(json.dumps(record.get(f)) for f in key_fields)


def select(recs: Iterable[dict], key_fields: Sequence[str] = KEY_FIELDS,
           **fields) -> list[dict]:
  """The records whose fields equal `fields` (later duplicates of a key win)."""
  chosen = {}
  for r in recs:
    if all(r.get(k) == v for k, v in fields.items()):
      chosen[key(r, key_fields)] = r
  return list(chosen.values())


def tuning_score(record: dict) -> float | None:
  """The mean validation accuracy of a tuning run's last SCORE_EVALS evaluations.

  None when the run diverged (it cannot be chosen).
  """
  if record.get("curve") is None:
    return None
  return float(np.mean(record["curve"]["accuracy_mean"][-SCORE_EVALS:]))


def choose_point(recs: Sequence[dict], server_axis: Sequence[float] | None,
                 client_axis: Sequence[float]) -> dict:
  """The best tuning point on a grid, and the edges it lies on.

  Args:
    recs: tuning records of one (profile, dataset, method).
    server_axis: the grid's server rates (None: local-only, no server rate).
    client_axis: the grid's client rates.

  Returns:
    {'server_lr', 'client_lr', 'score', 'edges', 'scores'}: 'edges' lists
    'server_low' / 'server_high' / 'client_low' / 'client_high' where the chosen rate is
    the smallest / largest of an axis with more than one value (empty: interior);
    'scores' maps (server_lr, client_lr) to the score (None: diverged). The point is
    None-valued when no point of the grid is recorded and finite.

  """
  on_grid = {(r["server_lr"], r["client_lr"]): tuning_score(r) for r in recs
             if (server_axis is None or r["server_lr"] in server_axis)
             and r["client_lr"] in client_axis}
  finite = {p: s for p, s in on_grid.items() if s is not None}
  if not finite:
    return {"server_lr": None, "client_lr": None, "score": None, "edges": [],
            "scores": on_grid}
  # Ties go to the smaller rates (the first in sorted order).
  best = max(sorted(finite, key=lambda p: (p[0] or 0, p[1])), key=lambda p: finite[p])
  edges = []
  for side, value, axis in (("server", best[0], server_axis), ("client", best[1],
                                                               client_axis)):
    if axis is None or len(axis) < 2:
      continue
    if value == min(axis):
      edges.append(f"{side}_low")
    if value == max(axis):
      edges.append(f"{side}_high")
  return {"server_lr": best[0], "client_lr": best[1], "score": finite[best], "edges": edges,
          "scores": on_grid}


def tuned_point(recs: Iterable[dict], profile: str, dataset: str, method: str,
                key_fields: Sequence[str] = KEY_FIELDS, *, phase: str = "tune",
                **fields) -> dict | None:
  """The chosen point of a method's whole recorded tuning grid, or None if untuned.

  `phase` and `fields` narrow the tuning records further (e.g. the server map's
  'tune_cell' records of one examples x clients cell).
  """
  mine = select(recs, key_fields, phase=phase, profile=profile, dataset=dataset,
                method=method, **fields)
  if not mine:
    return None
  servers = sorted({r["server_lr"] for r in mine if r["server_lr"] is not None})
  clients = sorted({r["client_lr"] for r in mine})
  chosen = choose_point(mine, servers or None, clients)
  return None if chosen["client_lr"] is None else chosen
