"""`train_and_evaluate(config, workdir)`: the one training loop of every algorithm.

`train_replicas(configs, workdirs)` runs the same loop over a replica group: runs that
share one program (seeds, learning-rate grid points, any field that reaches the step as
state or data; `replicas.py`) stacked on a leading axis and trained as ONE vmapped,
jitted program, with per-replica metrics.jsonl and config.json, one group checkpoint,
and a divergence guard per replica (a diverged replica is frozen at its last good state
and reported; the others go on). Runs that cannot share a program fall back to
`train_and_evaluate` one after another.

Order of work, every refusal before anything is written or compiled: validate the config
-> check and lock the workdir (one live run per workdir) -> build the clients' data and
check their values -> build the algorithm -> check the workdir's latest checkpoint against
this run's fingerprint (`fingerprint.py`) and its metrics.jsonl -> record config.json ->
put the data on the device(s) -> restore the checkpoint (state and metric window) or
initialize -> run chunks of steps, each chunk ONE jitted call (`loop.make_multi_step`),
ending at the next log, evaluation or checkpoint step -> evaluate, write metrics,
checkpoint -> final evaluation and checkpoint.

Metrics reach the host only at chunk ends. A non-finite loss, gradient or updated
parameter stops the run with `loop.NonFiniteError` naming the step and where; the state
is kept at the last finite step and nothing after it is saved. Signals follow
`signals.py`: before training a signal stops at once; during training the current chunk
finishes, a checkpoint is written and `signals.TrainingInterrupted` is raised, so a rerun
on the same workdir resumes exactly; a second signal stops at once.

Multi-process runs (after `distributed.initialize`) execute this same function in every
process over one mesh of all devices; only process 0 writes files, locks and prints.
"""

import contextlib
import dataclasses
import functools
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mtsl_jax import algorithms, checkpointing, data, distributed, evaluation, loop
from mtsl_jax import fingerprint, metric_writers, replicas, sharding, signals, split_state
from mtsl_jax import validation
from mtsl_jax import workdir as workdirs

TrainingInterrupted = signals.TrainingInterrupted


@dataclasses.dataclass
class TrainResult:
  """What a finished run returns.

  Attributes:
    state: the final state pytree (on the device).
    eval_metrics: the final evaluation (see `evaluation.summarize`).
    train_metrics: the last logged train metrics.
    algorithm: the built Algorithm (for further evaluation in a notebook).
    diverged: None, or (a replica of a group that hit a non-finite value) the message
      naming the step and what diverged; `state` and `eval_metrics` are then those of
      its last good step.
  """
  state: Any
  eval_metrics: dict
  train_metrics: dict
  algorithm: algorithms.Algorithm
  diverged: str | None = None


def next_boundary(step: int, config) -> int:
  """The next step at which something happens: log, eval, checkpoint or the end."""
  nxt = [((step // k) + 1) * k for k in (config.log_every, config.eval_every,
                                         config.checkpoint_every)]
  return min(nxt + [config.num_steps])


def checkpoint_at_boundary(checkpointer: checkpointing.Checkpointer, config, step: int,
                           state, window, signum: int | None, how_to_resume: str) -> None:
  """Saves at checkpoint steps, the last step and a signal's stop; then stops if signalled.

  Args:
    checkpointer: the run's checkpointer.
    config: the experiment config (checkpoint_every, num_steps).
    step: the step just reached (a chunk boundary).
    state: the state to save.
    window: the loop's metric window at this step (saved with the state).
    signum: the signal received during the chunk, or None.
    how_to_resume: the end of the interruption message.

  Raises:
    TrainingInterrupted: a signal arrived; the checkpoint is on disk.
  """
  if step % config.checkpoint_every == 0 or step == config.num_steps or signum is not None:
    checkpointer.save(step, state, window)  # once: a step already saved is not saved again
  if signum is not None:
    checkpointer.wait()
    raise TrainingInterrupted(f"stopped by signal {signum} at step {step}; checkpoint "
                              f"written to {checkpointer.directory}; {how_to_resume}", signum)


def write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Records the run's config as `<workdir>/config.json` (plots and sweeps read it).

  Written aside and renamed, so a crash never leaves a half-written file; called only
  after the workdir's checkpoint was found compatible, so a refused run never replaces
  the record of the run that owns the workdir.
  """
  tmp = workdir / "config.json.tmp"
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, workdir / "config.json")


def prepare_run(config: ml_collections.ConfigDict, federations: dict | None = None):
  """Builds and checks the data and the algorithm of a validated config.

  Args:
    config: a validated config.
    federations: federations already built, by data section and seed; the run's is
      reused from here when present and added when not (replicas of a learning-rate
      grid share one).

  Returns:
    (federation, algorithm).

  Raises:
    data.DataError, validation.ConfigError: bad data, or data that do not fit the config.
  """
  key = (config.data.to_json(sort_keys=True), config.seed)
  cache = {} if federations is None else federations
  if key not in cache:
    cache[key] = data.build_federation(config.data, config.seed)
  federation = cache[key]
  data.check_federation(federation, config)
  validation.validate_label_spaces(config, federation.num_classes)
  return federation, algorithms.build_algorithm(config, federation)


def check_resume(checkpointer: checkpointing.Checkpointer, config) -> int:
  """The step a run resumes from (0 if fresh), after refusing incompatible checkpoints.

  Raises:
    checkpointing.CheckpointMismatchError: another run's checkpoint.
    validation.ConfigError: num_steps below the checkpoint's step.
  """
  step = checkpointer.check_compatible()
  if step is None:
    return 0
  try:
    fingerprint.check_num_steps(config, step)
  except ValueError as e:
    raise validation.ConfigError("num_steps", str(e)) from None
  return step


def _param_norms(state) -> dict:
  """Parameter norms of the state's server and (per client) client sides, where present."""
  norms = {}
  if hasattr(getattr(state, "server", None), "params"):
    norms["server/param_norm"] = optax.tree.norm(state.server.params)
  if hasattr(getattr(state, "clients", None), "params"):
    norms["client/param_norm"] = split_state.per_client_norms(state.clients.params)
  return norms


_param_norms_jit = jax.jit(_param_norms)
_replica_param_norms = jax.jit(jax.vmap(_param_norms))


def _train_record(means: dict, algorithm, norms: dict, step: int) -> dict:
  """The train record of a log step: the window's means, parameter norms and traffic."""
  out = {k: np.asarray(v) for k, v in means.items()}
  for key, value in norms.items():
    out.setdefault(key, np.asarray(value))  # algorithms may report their own
  out.update(algorithm.traffic.cumulative(step))
  return out


def _print_accuracies(eval_metrics: dict, step: int) -> None:
  acc = eval_metrics["test/accuracy"]
  per_task = " ".join(f"{a:.3f}" for a in acc)
  print(f"step {step}: per-task test accuracy [{per_task}]\n"
        f"  mean {eval_metrics['test/accuracy_mean']:.4f}  "
        f"weighted {eval_metrics['test/accuracy_weighted']:.4f}  "
        f"worst {eval_metrics['test/accuracy_worst']:.4f}", flush=True)


@dataclasses.dataclass
class _Plan:
  """What the loop trains: one run, or a replica group (then `replicated`).

  Attributes:
    configs, workdirs, federations, algorithms: one per run (replica), in order.
    replicated: a replica group, trained as one vmapped program.
    checkpoint_dir: `<workdir>/checkpoints`, or the group directory's.
    fingerprint: what the checkpoints are computed from.
    names: how messages name each replica ('' for a single run).
    group_data: a group's data on the host (`replicas.stack_data`); None for one run.
  """
  configs: list
  workdirs: list
  federations: list
  algorithms: list
  replicated: bool
  checkpoint_dir: pathlib.Path
  fingerprint: dict
  names: list
  group_data: replicas.GroupData | None = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       *, verbose: bool = True, federations: dict | None = None) -> TrainResult:
  """Trains `config.algorithm` and evaluates every task; resumes from `workdir`.

  Args:
    config: an experiment config (see `config_base.base_config`).
    workdir: directory for checkpoints/, metrics.jsonl and tensorboard/; if it holds a
      checkpoint of the same run (see `fingerprint.py`), training resumes from the
      latest one.
    verbose: print the start-of-run report and the final accuracies.
    federations: federations already built (see `prepare_run`), so that runs of one
      process on the same data load it once.

  Returns:
    A TrainResult.

  Raises:
    validation.ConfigError, data.DataError, workdir.WorkdirError: bad config, data or
      workdir (before anything is written or compiled).
    loop.NonFiniteError: a loss, gradient or updated parameter became non-finite.
    checkpointing.CheckpointError: the workdir holds another run's checkpoint, a damaged
      one, or a checkpoint could not be written.
    metric_writers.MetricsFileError: a damaged metrics.jsonl that cannot be repaired.
    TrainingInterrupted: SIGINT/SIGTERM (see `signals.py`).
  """
  validation.validate_config(config)
  primary = distributed.is_primary()
  with signals.stop_requests() as stop:
    workdir = workdirs.check_workdir(workdir) if primary else pathlib.Path(workdir)
    with workdirs.locked(workdir) if primary else contextlib.nullcontext():
      federation, algorithm = prepare_run(config, federations)
      plan = _Plan([config], [workdir], [federation], [algorithm], replicated=False,
                   checkpoint_dir=workdir / "checkpoints",
                   fingerprint=fingerprint.of_run(config, federation), names=[""])
      with jax.disable_jit(config.disable_jit):
        return _train_locked(plan, stop, verbose=verbose and primary, primary=primary)[0]


def train_replicas(configs: Sequence[ml_collections.ConfigDict],
                   workdirs_: Sequence[str | pathlib.Path], *,
                   group_dir: str | pathlib.Path | None = None, verbose: bool = False,
                   fallback_fn: Callable | None = None,
                   allow_single: bool = False,
                   record_divergence: bool = False) -> list[TrainResult]:
  """Trains several runs as one vmapped program when they share one (else in turn).

  Args:
    configs: one config per run; they may differ in any field that reaches the step as
      state or data (the seed; learning rates with `learning_rate_in_state`), which
      `replicas.same_program` checks on the traced programs.
    workdirs_: one workdir per run (metrics.jsonl, timing.jsonl, tensorboard/ and
      config.json, as an ordinary run writes them; no checkpoints).
    group_dir: where the group's checkpoints go (default `replicas.default_group_dir`).
    verbose: print one line when the group starts or falls back, and divergences.
    fallback_fn: `(config, workdir, verbose=...) -> TrainResult` for runs that cannot
      share a program (default `train_and_evaluate`).
    allow_single: train even one run as a group (of one), e.g. so that many short runs
      in one process share the group path's eager initialization.
    record_divergence: a run trained on its own that diverges is returned with
      `diverged` set (and no state or metrics), as a replica of a group is, instead of
      raising; the runs after it still train (a learning-rate grid's large rates).

  Returns:
    One TrainResult per run, in order; a replica that diverged has `diverged` set.

  Raises:
    As `train_and_evaluate`, except that divergence does not raise in a group.
  """
  built = {}  # federations by data section and seed, shared with the fallback runs
  fallback_fn = fallback_fn or functools.partial(train_and_evaluate, federations=built)
  workdirs_ = [pathlib.Path(w) for w in workdirs_]
  if len(workdirs_) != len(configs) or len(set(workdirs_)) != len(workdirs_):
    raise validation.ConfigError("workdir", f"one distinct workdir per run; got "
                                 f"{len(workdirs_)} for {len(configs)} runs")
  for config in configs:
    validation.validate_config(config)
  with signals.stop_requests() as stop:
    feds, algs = (list(t) for t in zip(*[prepare_run(c, built) for c in configs]))
    group, reason = replicas.group_data(configs, feds, algs, allow_single)
    if group is not None:
      group_dir = workdirs.check_workdir(
          group_dir or replicas.default_group_dir(workdirs_, configs))
      workdirs_ = [workdirs.check_workdir(w) for w in workdirs_]
      names = [", ".join(f"{k}={v}" for k, v in label.items()) or f"replica {r}"
               for r, label in enumerate(replicas.labels(configs))]
      plan = _Plan(list(configs), workdirs_, feds, algs, replicated=True,
                   checkpoint_dir=group_dir / "checkpoints",
                   fingerprint=replicas.group_fingerprint(configs, feds), names=names,
                   group_data=group)
      with contextlib.ExitStack() as locks:
        for w in [group_dir, *workdirs_]:
          locks.enter_context(workdirs.locked(w))
        with jax.disable_jit(configs[0].disable_jit):
          return _train_locked(plan, stop, verbose=verbose, primary=True)
  logging.warning("runs %s train one after another: %s", [str(w) for w in workdirs_], reason)
  if verbose:
    print(f"train_replicas: {len(configs)} runs one after another: {reason}", flush=True)

  def alone(config, workdir):
    try:
      return fallback_fn(config, workdir, verbose=verbose)
    except loop.NonFiniteError as e:
      if not record_divergence:
        raise
      if verbose:
        print(f"train_replicas: {workdir} diverged: {str(e).splitlines()[0]}", flush=True)
      return TrainResult(state=None, eval_metrics={}, train_metrics={},
                         algorithm=prepare_run(config, built)[1], diverged=str(e))

  return [alone(c, w) for c, w in zip(configs, workdirs_)]


def _place(plan: _Plan, mesh):
  """The data on the device(s): (train, test, layout, axis).

  One run: laid out on the host (`evaluation.plan_layout`: test sets grouped by size,
  chunks within the evaluation's memory bound) and placed once, on one device or straight
  into the client sharding (no device ever holds the whole data set of a sharded run,
  whose clients stay in one group in their own order). A group: stacked on a leading
  replica axis (axis 0), or one copy for all (axis None).
  """
  if plan.replicated:
    group = plan.group_data
    train, test = jax.device_put((group.train, ((group.test_x, group.test_y,
                                                 group.test_counts),)))
    shape = group.test_x.shape if group.shared else group.test_x.shape[1:]
    return train, test, evaluation.stacked_layout(shape, group.chunk), (
        None if group.shared else 0)
  train_np, test_np = data.to_host(plan.federations[0])
  algorithm = plan.algorithms[0]
  layout = evaluation.layout_for(algorithm, jax.eval_shape(algorithm.init_state), test_np,
                                 plan.configs[0].eval_batch_size, group=mesh is None)
  test = evaluation.arrange(np.asarray(test_np.x), test_np.y, test_np.counts, layout)
  if mesh is not None:
    train, test = sharding.shard_clients((train_np, test), mesh)
  else:
    train, test = jax.device_put((train_np, test))
  return train, test, layout, None


def _train_locked(plan: _Plan, stop: signals.StopRequests, *, verbose: bool,
                  primary: bool) -> list[TrainResult]:
  """The loop of `train_and_evaluate` and `train_replicas` (configs valid, dirs ours)."""
  config, alg0, fed0 = plan.configs[0], plan.algorithms[0], plan.federations[0]
  num = len(plan.configs)
  mesh = (None if plan.replicated else
          sharding.client_mesh(config.parallel.client_devices, fed0.num_clients))
  checkpointer = checkpointing.Checkpointer(plan.checkpoint_dir, plan.fingerprint,
                                            config.max_checkpoints_to_keep)
  writers, abandon = [], False
  try:
    step = check_resume(checkpointer, config)
    writers = [metric_writers.MetricWriter(w, start_step=step) if primary
               else metric_writers.DiscardingWriter() for w in plan.workdirs]
    if primary:
      for c, w in zip(plan.configs, plan.workdirs):
        write_config(c, w)
    train_data, test_data, layout, data_axis = _place(plan, mesh)
    evaluate = evaluation.make_evaluate(alg0.logits, alg0.num_classes_M, layout)
    if plan.replicated:
      evaluate = jax.jit(jax.vmap(evaluate, in_axes=(0, data_axis)))
      run_steps = loop.make_multi_step(jax.vmap(alg0.step, in_axes=(0, data_axis)),
                                       replicated=True)
      # Every replica's state has replica 0's shapes (`replicas.same_program` checked):
      # the group's are those with a leading replica axis, found without tracing R inits.
      one = jax.eval_shape(alg0.init_state)
      abstract = loop.Replicas(
          states=jax.tree.map(lambda a: jax.ShapeDtypeStruct((num, *a.shape), a.dtype), one),
          frozen=jax.ShapeDtypeStruct((num,), jnp.bool_))
    else:
      run_steps = loop.make_multi_step(alg0.step)
      abstract = jax.eval_shape(alg0.init_state)

    # The state is created, or restored, directly in its final placement (in a
    # multi-process run no process could read back the whole state to place it).
    shardings = (None if plan.replicated else
                 sharding.state_shardings(abstract, mesh, fed0.num_clients))
    empty_window = run_steps.empty_window(abstract, train_data)
    if step:
      target_shapes = abstract if shardings is None else jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
      state = checkpointer.restore(target_shapes)
      window = checkpointer.restore_window(empty_window)
    elif plan.replicated:
      state = loop.Replicas(states=replicas.initial_states(plan.configs, plan.algorithms),
                            frozen=jnp.zeros((num,), bool))
      window = empty_window
    else:
      state = jax.jit(alg0.init_state, out_shardings=shardings)()
      window = empty_window
    diverged = {}
    if plan.replicated:
      diverged = {r: replicas.read_divergence(plan.workdirs[r])
                  for r in np.flatnonzero(np.asarray(state.frozen))}
    if verbose:
      _print_banner(plan, mesh, step)

    def evaluate_now(state) -> list[dict]:
      if not plan.replicated:
        raw = sharding.to_host(evaluate(state, test_data))
        return [evaluation.summarize(raw, fed0.test_counts)]
      raw = jax.device_get(evaluate(state.states, test_data))
      return [evaluation.summarize({k: v[r] for k, v in raw.items()}, f.test_counts)
              for r, f in enumerate(plan.federations)]

    def train_records(means: dict, state) -> list[dict]:
      if not plan.replicated:
        norms = sharding.to_host(_param_norms_jit(state))
        return [_train_record(means, alg0, norms, step)]
      norms = jax.device_get(_replica_param_norms(state.states))
      return [_train_record({k: v[r] for k, v in means.items()}, alg,
                            {k: v[r] for k, v in norms.items()}, step)
              for r, alg in enumerate(plan.algorithms)]

    train_metrics, eval_metrics = [{} for _ in range(num)], None
    bar = tqdm.tqdm(total=config.num_steps, initial=step, unit="step", dynamic_ncols=True,
                    disable=not (config.progress_bar and primary), file=sys.stderr)
    stop.start_training()
    with bar:
      while step < config.num_steps and len(diverged) < num:
        target = next_boundary(step, config)
        t0 = time.perf_counter()
        state, summary = run_steps(state, train_data, target - step, window)
        summary = sharding.to_host(summary)
        if plan.replicated:
          state = replicas.freeze_diverged(plan.names, state, summary, diverged, writers,
                                           verbose)
        else:
          loop.raise_if_diverged(summary, state)
        elapsed = time.perf_counter() - t0
        bar.update(target - step)
        step, window = target, summary["window"]
        timing = {"chunk_seconds": elapsed,
                  "steps_per_second": int(summary["steps_run"]) / elapsed}
        if plan.replicated:
          timing["replicas"] = num
        for w in writers:
          w.write_timing(step, timing)
        live = [r not in diverged for r in range(num)]
        if step % config.log_every == 0 or step == config.num_steps:
          records = train_records(summary["mean"], state)
          for r in range(num):
            if live[r]:
              train_metrics[r] = records[r]
              writers[r].write(step, records[r])
          window = empty_window  # the next log averages the steps after this one
          if not plan.replicated:
            bar.set_postfix(loss=f"{float(records[0]['loss']):.4f}")
        if step % config.eval_every == 0 or step == config.num_steps:
          eval_metrics = evaluate_now(state)
          for r in range(num):
            if live[r]:
              writers[r].write(step, eval_metrics[r])
          if not plan.replicated:
            bar.set_postfix(loss=f"{float(summary['mean']['loss']):.4f}",
                            acc=f"{eval_metrics[0]['test/accuracy_mean']:.3f}")
        if len(diverged) == num:  # nothing left to train: keep where every replica froze
          checkpointer.save(step, state, window)
        checkpoint_at_boundary(checkpointer, config, step, state, window,
                               distributed.signal_on_any_process(stop.signum),
                               "rerun with the same --workdir to resume" if not plan.replicated
                               else "rerun the same command to resume")
    if eval_metrics is None:  # resumed a finished run: evaluate what was restored
      eval_metrics = evaluate_now(state)
    checkpointer.wait()
  except TrainingInterrupted as e:
    abandon = e.immediate  # stop now: do not wait for a save in progress
    raise
  finally:
    for w in writers:
      w.close()
    if not abandon:
      checkpointer.close()
  if not plan.replicated:
    if verbose:
      _print_accuracies(eval_metrics[0], step)
    return [TrainResult(state=state, eval_metrics=eval_metrics[0],
                        train_metrics=train_metrics[0], algorithm=alg0)]
  return [TrainResult(state=replicas.unstack(state.states, r), eval_metrics=eval_metrics[r],
                      train_metrics=train_metrics[r], algorithm=alg,
                      diverged=diverged.get(r))
          for r, alg in enumerate(plan.algorithms)]


def _print_banner(plan: _Plan, mesh, step: int) -> None:
  config, fed0, alg0 = plan.configs[0], plan.federations[0], plan.algorithms[0]
  start = f"{'resuming from step ' + str(step) if step else 'starting'} -> {config.num_steps} steps"
  if plan.replicated:
    print(f"mtsl_jax: {config.algorithm} on {fed0.description}, {len(plan.configs)} "
          f"replicas vmapped ({'; '.join(plan.names)})\n"
          f"  {start}; group checkpoints in {plan.checkpoint_dir.parent}", flush=True)
    return
  print(f"mtsl_jax: {config.algorithm} on {fed0.description}\n"
        f"  devices: {jax.devices()}"
        f"{f' (clients sharded over {mesh.size})' if mesh is not None else ''}\n"
        f"  parameters: {alg0.param_counts}\n"
        f"  bytes per step: up {int(alg0.traffic.uplink_M.sum())}, "
        f"down {int(alg0.traffic.downlink_M.sum())}\n"
        f"  {start}; workdir {plan.workdirs[0]}", flush=True)
