"""Several seeds of one experiment trained as ONE vmapped, jitted program.

Seeds change the data (each seed builds its own federation) and the initial state (each
seed's own parameters and `state.rng`), but not the program, so the seeds of a config
form a replica group (`replicas.py`) that `train.train_replicas` trains with the one
training loop: chunks, metric windows, checkpoints of the stacked state in a group
directory (an interrupted group resumes exactly), signals, and a divergence guard per
seed (a seed that diverges is frozen at its last good step and reported in its result
and metrics.jsonl; the others go on). Each seed writes metrics.jsonl, timing.jsonl,
tensorboard/ and config.json to its OWN workdir, as an ordinary run would.

When the seeds cannot share a program (data-size weights, MTSL's task weights or the
federated baselines' default aggregation weights, with different train counts per seed;
local epochs whose largest client differs per seed; label spaces that differ per seed;
clients sharded over several devices)
they train one after another with `train.train_and_evaluate`. Since every seed keeps its
own keys, a vmapped seed ends with the parameters of that seed run alone, up to float
rounding of batched kernels.
"""

import copy
import pathlib
from typing import Callable, Sequence

import ml_collections

from mtsl_jax import train, validation


def seed_configs(config: ml_collections.ConfigDict,
                 seeds: Sequence[int]) -> list[ml_collections.ConfigDict]:
  """`config` once per seed (distinct seeds)."""
  if len(set(seeds)) != len(seeds):
    raise validation.ConfigError("seed", f"seeds must be distinct; got {list(seeds)}")
  configs = []
  for seed in seeds:
    c = copy.deepcopy(config)
    c.seed = seed
    configs.append(c)
  return configs


def default_group_dir(workdirs: Sequence[str | pathlib.Path], seeds: Sequence[int]):
  """`<parent of workdir 0>/seed_groups/<workdir 0's name>_seeds=<s0,s1,...>`."""
  first = pathlib.Path(workdirs[0])
  return first.parent / "seed_groups" / f"{first.name}_seeds={','.join(map(str, seeds))}"


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
                workdirs: Sequence[str | pathlib.Path], *,
                group_dir: str | pathlib.Path | None = None, verbose: bool = False,
                fallback_fn: Callable | None = None,
                allow_single: bool = False,
                record_divergence: bool = False) -> list[train.TrainResult]:
  """Trains `config` for every seed, as one replica group when they share a program.

  Args:
    config: the experiment config; its `seed` is replaced by each of `seeds`.
    seeds: the seeds (distinct).
    workdirs: one workdir per seed (metrics and config.json go there).
    group_dir: where the stacked state's checkpoints go (see `default_group_dir`).
    verbose: print one line when the group starts or falls back, and divergences.
    fallback_fn: `(config, workdir, verbose=...) -> TrainResult` for sequential runs
      (default `train.train_and_evaluate`).
    allow_single: run even one seed as a group (of one), see `train.train_replicas`.
    record_divergence: a seed trained on its own (its seeds could not share a program)
      that diverges comes back with `diverged` set instead of stopping the others, as a
      replica of a group does (`train.train_replicas`).

  Returns:
    One TrainResult per seed, in order; a seed that diverged has `diverged` set.

  Raises:
    As `train.train_replicas`.
  """
  configs = seed_configs(config, seeds)
  return train.train_replicas(configs, workdirs,
                              group_dir=group_dir or default_group_dir(workdirs, seeds),
                              verbose=verbose, fallback_fn=fallback_fn,
                              allow_single=allow_single, record_divergence=record_divergence)

