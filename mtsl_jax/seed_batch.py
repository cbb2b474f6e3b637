"""Several seeds of one experiment trained as ONE vmapped, jitted program.

Seeds change the data (each seed builds its own federation) and the initial state (each
seed's `init_state`, so its own parameters and its own `state.rng`), but not the program:
when every seed's Algorithm has the same state structure, shapes and dtypes and the same
closed-over constants (label-space sizes, task weights, traffic), seed 0's `step` applied
with `jax.vmap` over a leading seed axis [S, ...] of states and data computes every seed's
step at once. `can_vmap_seeds` decides this and says why not; `train_seeds` falls back to
ordinary sequential `train.train_and_evaluate` runs when the answer is no. Task weights
'data_size' with different train counts per seed, label spaces that differ per seed, or
client sharding over several devices all force the fallback.

How a group runs (`train_seeds`):
  * each seed's train and test `ClientArrays` are padded with zeros to the largest N over
    the seeds (counts unchanged, so sampling and evaluation never reach the padding) and
    stacked; the seeds' initial states are stacked likewise;
  * the vmapped step is wrapped for `loop.make_multi_step`, so chunks, the metric window,
    the divergence guard and the traced trip count are exactly those of `train.py`. A
    non-finite value anywhere stops every seed at the last good step (the group shares
    one loop), and `raise_if_diverged` names the seed(s) and what diverged;
  * each seed writes metrics.jsonl, timing.jsonl, tensorboard/ and config.json to its OWN
    workdir, as an ordinary run would, so plots and sweeps read it unchanged;
  * the stacked state is checkpointed in a group directory (fingerprint: the config's,
    with the seed list for the seed and a digest of every seed's data), so an interrupted
    group resumes exactly. The seeds' own workdirs hold no checkpoints; the group
    directory and every seed's workdir are locked while the group runs.

Since every seed keeps its own keys, a vmapped seed ends with the parameters of that seed
run alone, up to float rounding of batched kernels.
"""

import contextlib
import copy
import pathlib
import time
from typing import Any, Callable, Sequence

from absl import logging
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtsl_jax import algorithms, checkpointing, data, evaluation, fingerprint, loop
from mtsl_jax import metric_writers, signals, train, validation
from mtsl_jax import workdir as workdirs_lib
from mtsl_jax.algorithms import mtsl

PyTree = Any


@struct.dataclass
class SeedStates:
  """The stacked states of a seed group, with the scalar `step` the runner reads.

  Attributes:
    states: every seed's state stacked on a leading axis [S, ...].
  """
  states: PyTree

  @property
  def step(self) -> jax.Array:
    return self.states.step[0]  # all seeds step together


def can_vmap_seeds(configs: Sequence[ml_collections.ConfigDict],
                   algorithms_built: Sequence[algorithms.Algorithm],
                   train_counts: Sequence[np.ndarray] | None = None,
                   allow_single: bool = False) -> tuple[bool, str]:
  """Whether seed 0's step, vmapped, computes every seed's step.

  Args:
    configs: one config per seed.
    algorithms_built: the seeds' Algorithms, built from their own federations.
    train_counts: train examples per client of each seed; needed unless the task weights
      are 'uniform' (with 'data_size' the weights, closed over by the step, follow them).
    allow_single: a single seed may run as a group of one (see `train_seeds`).

  Returns:
    (True, '') or (False, the reason).
  """
  if len(configs) < (1 if allow_single else 2):
    return False, "fewer than two seeds"
  strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "seed"}
  if any(strip(c) != strip(configs[0]) for c in configs[1:]):
    return False, "the configs differ in more than the seed"
  if configs[0].parallel.client_devices != 1:
    return False, "clients are sharded over several devices (parallel.client_devices)"
  first = algorithms_built[0]
  shape0 = jax.eval_shape(first.init_state)
  for config, alg in zip(configs[1:], algorithms_built[1:]):
    shape = jax.eval_shape(alg.init_state)
    if jax.tree.structure(shape) != jax.tree.structure(shape0) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jax.tree.leaves(shape), jax.tree.leaves(shape0))):
      return False, f"seed {config.seed}'s state differs in structure, shape or dtype"
    if not np.array_equal(alg.num_classes_M, first.num_classes_M):
      return False, f"seed {config.seed}'s label-space sizes differ ({alg.num_classes_M})"
    if not (np.array_equal(alg.traffic.uplink_M, first.traffic.uplink_M)
            and np.array_equal(alg.traffic.downlink_M, first.traffic.downlink_M)):
      return False, f"seed {config.seed}'s traffic differs"
  scheme = configs[0].split.task_weights
  if scheme != "uniform":
    if train_counts is None:
      return False, f"task_weights={scheme!r} and the seeds' train counts are unknown"
    weights = [mtsl.task_weights(scheme, n) for n in train_counts]
    if any(not np.array_equal(w, weights[0]) for w in weights[1:]):
      return False, (f"task_weights={scheme!r} and the seeds' train counts differ, so "
                     "each seed's step weighs the tasks differently")
  return True, ""


def make_seed_step(step: Callable) -> Callable:
  """Seed 0's `step` vmapped over the seed axis, in the form `loop.make_multi_step` takes.

  Args:
    step: an Algorithm's `(state, data) -> (state, metrics)`.

  Returns:
    `(SeedStates, stacked data) -> (SeedStates, metrics)`; every metric, flags included,
    has a leading S axis (the runner rejects a step if any flag of any seed is false).
  """
  vstep = jax.vmap(step)

  def seed_step(group: SeedStates, stacked_data):
    states, metrics = vstep(group.states, stacked_data)
    return SeedStates(states), metrics

  return seed_step


def raise_if_diverged(summary: dict, seeds: Sequence[int]) -> None:
  """Raises loop.NonFiniteError naming the seed(s), step and what became non-finite."""
  bad_step = int(summary["bad_step"])
  if bad_step < 0 and bool(summary["state_finite"]):
    return
  if bad_step < 0:
    raise loop.NonFiniteError(
        f"non-finite values after step {int(summary['last_step'])}: an update overflowed a "
        "parameter of the group (the loss and gradients were finite); nothing of this chunk "
        "was saved; lower the learning rates, or clip gradients (grad_clip_norm)")
  parts, worst = [], None
  for s, seed in enumerate(seeds):
    flags = {k: np.asarray(v)[s] for k, v in summary["flags"].items()}
    names = loop.describe_flags(flags)
    if names:
      parts.append(f"seed {seed}: {'; '.join(names)}")
      worst = worst or flags
  raise loop.NonFiniteError(
      f"non-finite values at step {bad_step + 1} in {' | '.join(parts)}; every seed of the "
      f"group was kept at step {bad_step} and nothing of this chunk was saved; "
      f"{loop.advice(worst)}")


def _stack(trees: Sequence[PyTree]) -> PyTree:
  """Stacks the seeds' trees on a new leading axis (traceable: used under eval_shape)."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _stack_on_host(trees: Sequence[PyTree]) -> PyTree:
  """`_stack` for concrete trees, done in numpy and put on the device once.

  jnp.stack would compile one small program per distinct leaf shape (seconds for a
  state of a few dozen leaves); numpy compiles nothing.
  """
  return jax.device_put(jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]),
                                     *trees))


def _pad_clients(arrays: data.ClientArrays, n: int) -> data.ClientArrays:
  """Zero-pads the example axis to `n` (in numpy); counts are unchanged, so padding is
  never read."""
  x, y = np.asarray(arrays.x), np.asarray(arrays.y)
  pad = n - int(x.shape[1])
  return arrays.replace(x=np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)),
                        y=np.pad(y, [(0, 0), (0, pad)]))


def default_group_dir(workdirs: Sequence[str | pathlib.Path], seeds: Sequence[int]):
  """`<parent of workdir 0>/seed_groups/<workdir 0's name>_seeds=<s0,s1,...>`."""
  first = pathlib.Path(workdirs[0])
  return first.parent / "seed_groups" / f"{first.name}_seeds={','.join(map(str, seeds))}"


def train_seeds(config: ml_collections.ConfigDict, seeds: Sequence[int],
                workdirs: Sequence[str | pathlib.Path], *,
                group_dir: str | pathlib.Path | None = None, verbose: bool = False,
                fallback_fn: Callable = train.train_and_evaluate,
                allow_single: bool = False) -> list[train.TrainResult]:
  """Trains `config` for every seed, vmapped when `can_vmap_seeds` allows, else in turn.

  Args:
    config: the experiment config; its `seed` is replaced by each of `seeds`.
    seeds: the seeds (distinct).
    workdirs: one workdir per seed (metrics and config.json go there).
    group_dir: where the stacked state's checkpoints go (see `default_group_dir`).
    verbose: print one line when the group starts and when it falls back.
    fallback_fn: `(config, workdir, verbose=...) -> TrainResult` for sequential runs.
    allow_single: run even one seed as a group (of one). Many short runs in one process
      (a sweep, the comparison's tuning) then share the group path's eagerly compiled
      initialization instead of compiling each run's own.

  Returns:
    One TrainResult per seed, in order; `state` is that seed's slice of the group state.

  Raises:
    As `train.train_and_evaluate`; loop.NonFiniteError names the seed.
  """
  if len(set(seeds)) != len(seeds) or len(workdirs) != len(seeds):
    raise validation.ConfigError("seed", f"seeds must be distinct, one workdir each; got "
                                 f"seeds {list(seeds)} and {len(workdirs)} workdirs")
  configs = []
  for seed in seeds:
    c = copy.deepcopy(config)
    c.seed = seed
    validation.validate_config(c)
    configs.append(c)
  feds, algs = zip(*[train.prepare_run(c) for c in configs])
  ok, reason = can_vmap_seeds(configs, algs, [f.train_counts for f in feds], allow_single)
  if not ok:
    logging.warning("seeds %s run one after another: %s", list(seeds), reason)
    if verbose:
      print(f"seed_batch: seeds {list(seeds)} run one after another: {reason}", flush=True)
    return [fallback_fn(c, w, verbose=verbose) for c, w in zip(configs, workdirs)]
  group_dir = workdirs_lib.check_workdir(group_dir or default_group_dir(workdirs, seeds))
  workdirs = [workdirs_lib.check_workdir(w) for w in workdirs]
  with signals.stop_requests() as stop, contextlib.ExitStack() as locks:
    for w in [group_dir, *workdirs]:
      locks.enter_context(workdirs_lib.locked(w))
    return _train_group(configs, feds, algs, workdirs, group_dir, stop, verbose)


def _train_group(configs, feds, algs, workdirs, group_dir, stop: signals.StopRequests,
                 verbose) -> list[train.TrainResult]:
  """The vmapped run of `train_seeds` (checks done, directories locked)."""
  config, seeds, alg0 = configs[0], [c.seed for c in configs], algs[0]
  digest = fingerprint.data_digest([np.frombuffer(fingerprint.federation_digest(f).encode(),
                                                  np.uint8) for f in feds])
  fp = fingerprint.run_fingerprint(config, digest, seeds=list(seeds))
  fp["config"].pop("seed")  # the group's seeds are the `seeds` entry
  checkpointer = checkpointing.Checkpointer(group_dir / "checkpoints", fp,
                                            config.max_checkpoints_to_keep)
  writers, abandon = [], False
  try:
    step = train.check_resume(checkpointer, config)
    writers = [metric_writers.MetricWriter(w, start_step=step) for w in workdirs]
    for c, w in zip(configs, workdirs):
      train.write_config(c, w)
    on_host = [data.to_host(f) for f in feds]
    n_train = max(int(tr.x.shape[1]) for tr, _ in on_host)
    n_test = max(int(te.x.shape[1]) for _, te in on_host)
    train_data = _stack_on_host([_pad_clients(tr, n_train) for tr, _ in on_host])
    chunk = min(config.eval_batch_size, n_test)
    # Whole evaluation chunks: the test axis padded to a multiple of `chunk` at once.
    padded = [_pad_clients(te, -(-n_test // chunk) * chunk) for _, te in on_host]
    test_x, test_y = _stack_on_host([t.x for t in padded]), _stack_on_host([t.y for t in padded])
    test_counts = _stack_on_host([te.counts for _, te in on_host])
    evaluate = jax.jit(jax.vmap(evaluation.make_evaluate(
        alg0.logits, jnp.asarray(alg0.num_classes_M), chunk)))
    run_steps = loop.make_multi_step(make_seed_step(alg0.step))
    init_all = lambda: _stack([alg.init_state() for alg in algs])
    empty_window = run_steps.empty_window(SeedStates(jax.eval_shape(init_all)), train_data)
    if step:
      states = checkpointer.restore(jax.eval_shape(init_all))
      window = checkpointer.restore_window(empty_window)
    else:
      # Eagerly, op by op: op compilations are cached by shape, so the seeds after the
      # first (and later groups of the same model in this process) initialize in a
      # fraction of a second, where a jit per seed compiles each seed's closure anew.
      states = _stack_on_host([alg.init_state() for alg in algs])
      window = empty_window
    group = SeedStates(states)
    if verbose:
      print(f"seed_batch: {config.algorithm}, seeds {seeds} vmapped; "
            f"{'resuming from step ' + str(step) if step else 'starting'} -> "
            f"{config.num_steps} steps; group checkpoints in {group_dir}", flush=True)

    def evaluate_now(group):
      raw = jax.device_get(evaluate(group.states, test_x, test_y, test_counts))
      return [evaluation.summarize({k: v[s] for k, v in raw.items()}, f.test_counts)
              for s, f in enumerate(feds)]

    train_metrics, eval_metrics = [{} for _ in seeds], None
    stop.start_training()
    while step < config.num_steps:
      target = train.next_boundary(step, config)
      t0 = time.perf_counter()
      group, summary = run_steps(group, train_data, target - step, window)
      summary = jax.device_get(summary)
      raise_if_diverged(summary, seeds)
      elapsed = time.perf_counter() - t0
      step, window = target, summary["window"]
      for w in writers:
        w.write_timing(step, {"chunk_seconds": elapsed, "seeds": len(seeds),
                              "steps_per_second": int(summary["steps_run"]) / elapsed})
      if step % config.log_every == 0 or step == config.num_steps:
        train_metrics = [train._train_summary(  # pylint: disable=protected-access
            {k: v[s] for k, v in summary["mean"].items()}, alg,
            jax.tree.map(lambda x, s=s: x[s], group.states), step)
                         for s, alg in enumerate(algs)]
        for w, m in zip(writers, train_metrics):
          w.write(step, m)
        window = empty_window
      if step % config.eval_every == 0 or step == config.num_steps:
        eval_metrics = evaluate_now(group)
        for w, m in zip(writers, eval_metrics):
          w.write(step, m)
      train.checkpoint_at_boundary(checkpointer, config, step, group.states, window,
                                   stop.signum, "rerun the same command to resume")
    if eval_metrics is None:  # resumed a finished group: evaluate what was restored
      eval_metrics = evaluate_now(group)
    checkpointer.wait()
  except signals.TrainingInterrupted as e:
    abandon = e.immediate  # stop now: do not wait for a save in progress
    raise
  finally:
    for w in writers:
      w.close()
    if not abandon:
      checkpointer.close()
  return [train.TrainResult(state=jax.tree.map(lambda a, s=s: a[s], group.states),
                            eval_metrics=e, train_metrics=t, algorithm=alg)
          for s, (e, t, alg) in enumerate(zip(eval_metrics, train_metrics, algs))]
