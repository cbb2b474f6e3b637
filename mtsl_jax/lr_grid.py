"""A grid of (server, client) learning rates trained as replica groups of the one loop.

Each grid point is an ordinary run of the config with its two rates held in the optimizer
states (`learning_rate_in_state`), so the points differ only in state values and share
one program: `train.train_replicas` trains them as ONE vmapped, jitted program, with the
loop's divergence guard per point (a diverged point is frozen and the others go on),
metrics.jsonl per point, group checkpoints (an interrupted grid resumes), signals and
progress. Every point starts from the same initial parameters and draws the same
minibatches (same seed and data), so points differ only in their learning rates. Grids
too large for memory run in chunks of points (`chunk_size`), one group each.

`run_grid` returns the curves the study needs, read back from each point's metrics.jsonl:
the mean weighted train loss over each chunk of `eval_every` steps (the train record of
a log step, with log_every = eval_every) and the mean per-task test accuracy after it.
"""

import copy
import pathlib
from typing import Sequence

import ml_collections
import numpy as np

from mtsl_jax import metric_writers, train, validation


def point_name(server_lr: float, client_lr: float) -> str:
  """The workdir name of grid point (η_s, η_c)."""
  return f"eta_s={server_lr:g},eta_c={client_lr:g}"


def grid_configs(config: ml_collections.ConfigDict, server_lrs_G: Sequence[float],
                 client_lrs_G: Sequence[float], eval_every: int,
                 num_evals: int) -> list[ml_collections.ConfigDict]:
  """One config per grid point: the rates set and held in the optimizer states.

  Args:
    config: the experiment config (its other optimizer settings are kept).
    server_lrs_G, client_lrs_G: the rates of the G points.
    eval_every: steps between evaluations (also the log and checkpoint interval).
    num_evals: evaluations (E); the points train eval_every * E steps.

  Returns:
    G validated configs.
  """
  configs = []
  for eta_s, eta_c in zip(server_lrs_G, client_lrs_G):
    c = copy.deepcopy(config)
    c.server_optimizer.learning_rate, c.client_optimizer.learning_rate = float(eta_s), float(eta_c)
    c.server_optimizer.learning_rate_in_state = True
    c.client_optimizer.learning_rate_in_state = True
    c.num_steps = eval_every * num_evals
    c.log_every = c.eval_every = c.checkpoint_every = eval_every
    c.progress_bar = False
    validation.validate_config(c)
    configs.append(c)
  return configs


def _curves(workdir: pathlib.Path, eval_every: int, num_evals: int):
  """(losses [E], accuracies [E]) of one point; NaN after it diverged."""
  losses, accs = np.full(num_evals, np.nan), np.full(num_evals, np.nan)
  for record in metric_writers.read_metrics(workdir):
    e = record["step"] // eval_every - 1
    if record["step"] % eval_every or not 0 <= e < num_evals:
      continue
    if "loss" in record:
      losses[e] = record["loss"]
    if "test/accuracy_mean" in record:
      accs[e] = record["test/accuracy_mean"]
  return losses, accs


def run_grid(config: ml_collections.ConfigDict, server_lrs_G, client_lrs_G,
             workdir: str | pathlib.Path, *, eval_every: int, num_evals: int,
             chunk_size: int = 0, verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Trains every grid point; in chunks of `chunk_size` points when it is positive.

  Args:
    config: an experiment config whose optimizers keep their state across steps (MTSL;
      methods that restart an optimizer every round cannot hold its rate in the state,
      and their points then train one after another).
    server_lrs_G, client_lrs_G: the rates of the G points.
    workdir: the grid's directory: one workdir per point (`point_name`) and the groups'
      checkpoints; rerunning on it resumes (finished points are not trained again).
    eval_every: steps per chunk of the curves.
    num_evals: chunks (E).
    chunk_size: points per vmapped program; 0 trains all G at once.
    verbose: print each group's start line and divergences.

  Returns:
    (losses [G, E], accuracies [G, E]) as numpy; a diverged point has NaN from the chunk
    in which it diverged on.
  """
  workdir = pathlib.Path(workdir)
  server_lrs, client_lrs = np.asarray(server_lrs_G, float), np.asarray(client_lrs_G, float)
  configs = grid_configs(config, server_lrs, client_lrs, eval_every, num_evals)
  workdirs = [workdir / point_name(s, c) for s, c in zip(server_lrs, client_lrs)]
  total = len(configs)
  size = chunk_size if 0 < chunk_size < total else total
  for start in range(0, total, size):
    part = slice(start, min(start + size, total))
    # A point's divergence is a result of the grid: its curve ends (NaN) and the rest go on.
    train.train_replicas(configs[part], workdirs[part], verbose=verbose, allow_single=True,
                         group_dir=workdir / "groups" / f"points={start}-{part.stop - 1}",
                         record_divergence=True)
  curves = [_curves(w, eval_every, num_evals) for w in workdirs]
  return np.stack([c[0] for c in curves]), np.stack([c[1] for c in curves])


def steps_to_target(accs_GxE: np.ndarray, losses_GxE: np.ndarray, target: float,
                    eval_every: int) -> np.ndarray:
  """First evaluated step with mean test accuracy ≥ target (inf if never or diverged)."""
  ok = (accs_GxE >= target) & np.isfinite(losses_GxE)
  first = np.argmax(ok, axis=1)
  return np.where(ok.any(axis=1), (first + 1) * eval_every, np.inf)
