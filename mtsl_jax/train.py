"""`train_and_evaluate(config, workdir)`: the one training loop of every algorithm.

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
import os
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mtsl_jax import algorithms, checkpointing, data, distributed, evaluation, loop
from mtsl_jax import fingerprint, metric_writers, sharding, signals, split, validation
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
  """
  state: Any
  eval_metrics: dict
  train_metrics: dict
  algorithm: algorithms.Algorithm


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


def prepare_run(config: ml_collections.ConfigDict):
  """Builds and checks the data and the algorithm of a validated config.

  Args:
    config: a validated config.

  Returns:
    (federation, algorithm).

  Raises:
    data.DataError, validation.ConfigError: bad data, or data that do not fit the config.
  """
  federation = data.build_federation(config.data, config.seed)
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
    norms["client/param_norm"] = split.per_client_norms(state.clients.params)
  return norms


_param_norms_jit = jax.jit(_param_norms)


def _train_summary(means: dict, algorithm, state, step: int) -> dict:
  """The train record of a log step: the window's means, parameter norms and traffic."""
  out = {k: np.asarray(v) for k, v in means.items()}
  for key, value in sharding.to_host(_param_norms_jit(state)).items():
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       *, verbose: bool = True) -> TrainResult:
  """Trains `config.algorithm` and evaluates every task; resumes from `workdir`.

  Args:
    config: an experiment config (see `config_base.base_config`).
    workdir: directory for checkpoints/, metrics.jsonl and tensorboard/; if it holds a
      checkpoint of the same run (see `fingerprint.py`), training resumes from the
      latest one.
    verbose: print the start-of-run report and the final accuracies.

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
      return _train_locked(config, workdir, stop, verbose=verbose and primary,
                           primary=primary)


def _train_locked(config, workdir: pathlib.Path, stop: signals.StopRequests, *,
                  verbose: bool, primary: bool) -> TrainResult:
  """`train_and_evaluate` once the config is valid and the workdir is ours."""
  federation, algorithm = prepare_run(config)
  mesh = sharding.client_mesh(config.parallel.client_devices, federation.num_clients)
  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints",
                                            fingerprint.of_run(config, federation),
                                            config.max_checkpoints_to_keep)
  writer, abandon = None, False
  try:
    step = check_resume(checkpointer, config)
    writer = (metric_writers.MetricWriter(workdir, start_step=step) if primary
              else metric_writers.DiscardingWriter())
    if primary:
      write_config(config, workdir)
    # Padded on the host and placed once: on one device, or straight into the client
    # sharding (no device ever holds the whole data set of a sharded run).
    train_np, test_np = data.to_host(federation)
    chunk = min(config.eval_batch_size, int(test_np.x.shape[1]))
    test_x, test_y = evaluation.pad_examples(test_np.x, test_np.y, chunk)
    if mesh is not None:
      train_data, (test_x, test_y, test_counts) = sharding.shard_clients(
          (train_np, (test_x, test_y, test_np.counts)), mesh)
    else:
      train_data, (test_x, test_y, test_counts) = jax.device_put(
          (train_np, (test_x, test_y, test_np.counts)))
    evaluate = evaluation.make_evaluate(algorithm.logits,
                                        jnp.asarray(algorithm.num_classes_M), chunk)
    run_steps = loop.make_multi_step(algorithm.step)

    # The state is created, or restored, directly in its final placement (in a
    # multi-process run no process could read back the whole state to place it).
    abstract = jax.eval_shape(algorithm.init_state)
    shardings = sharding.state_shardings(abstract, mesh, federation.num_clients)
    empty_window = run_steps.empty_window(abstract, train_data)
    if step:
      state = checkpointer.restore(jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings))
      window = checkpointer.restore_window(empty_window)
    else:
      state = jax.jit(algorithm.init_state, out_shardings=shardings)()
      window = empty_window
    if verbose:
      print(f"mtsl_jax: {config.algorithm} on {federation.description}\n"
            f"  devices: {jax.devices()}"
            f"{f' (clients sharded over {mesh.size})' if mesh is not None else ''}\n"
            f"  parameters: {algorithm.param_counts}\n"
            f"  bytes per step: up {int(algorithm.traffic.uplink_M.sum())}, "
            f"down {int(algorithm.traffic.downlink_M.sum())}\n"
            f"  {'resuming from step ' + str(step) if step else 'starting'} -> "
            f"{config.num_steps} steps; workdir {workdir}", flush=True)

    def evaluate_now(state):
      raw = sharding.to_host(evaluate(state, test_x, test_y, test_counts))
      return evaluation.summarize(raw, federation.test_counts)

    train_metrics, eval_metrics = {}, None
    bar = tqdm.tqdm(total=config.num_steps, initial=step, unit="step", dynamic_ncols=True,
                    disable=not (config.progress_bar and primary), file=sys.stderr)
    stop.start_training()
    with bar:
      while step < config.num_steps:
        target = next_boundary(step, config)
        t0 = time.perf_counter()
        state, summary = run_steps(state, train_data, target - step, window)
        summary = sharding.to_host(summary)
        loop.raise_if_diverged(summary, state)
        elapsed = time.perf_counter() - t0
        bar.update(target - step)
        step, window = target, summary["window"]
        writer.write_timing(step, {"chunk_seconds": elapsed,
                                   "steps_per_second": int(summary["steps_run"]) / elapsed})
        if step % config.log_every == 0 or step == config.num_steps:
          train_metrics = _train_summary(summary["mean"], algorithm, state, step)
          writer.write(step, train_metrics)
          window = empty_window  # the next log averages the steps after this one
          bar.set_postfix(loss=f"{float(train_metrics['loss']):.4f}")
        if step % config.eval_every == 0 or step == config.num_steps:
          eval_metrics = evaluate_now(state)
          writer.write(step, eval_metrics)
          bar.set_postfix(loss=f"{float(summary['mean']['loss']):.4f}",
                          acc=f"{eval_metrics['test/accuracy_mean']:.3f}")
        checkpoint_at_boundary(checkpointer, config, step, state, window,
                               distributed.signal_on_any_process(stop.signum),
                               "rerun with the same --workdir to resume")
    if eval_metrics is None:  # resumed a finished run: evaluate what was restored
      eval_metrics = evaluate_now(state)
    checkpointer.wait()
  except TrainingInterrupted as e:
    abandon = e.immediate  # stop now: do not wait for a save in progress
    raise
  finally:
    if writer is not None:
      writer.close()
    if not abandon:
      checkpointer.close()
  if verbose:
    _print_accuracies(eval_metrics, step)
  return TrainResult(state=state, eval_metrics=eval_metrics, train_metrics=train_metrics,
                     algorithm=algorithm)
