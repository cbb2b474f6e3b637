"""`train_and_evaluate(config, workdir)`: the one training loop of every algorithm.

Order of work: validate the config (before anything loads or compiles) -> build the
clients' data and put it on the device -> build the algorithm -> restore the latest
checkpoint of `workdir` or initialize -> run chunks of steps, each chunk ONE jitted call
(`loop.make_multi_step`), ending at the next log, evaluation or checkpoint step ->
evaluate, write metrics, checkpoint -> final evaluation and checkpoint.

Metrics reach the host only at chunk ends. A non-finite loss or gradient stops the run
with `loop.NonFiniteError` naming the step and side; SIGINT/SIGTERM finish the current
chunk, write a checkpoint and raise `TrainingInterrupted`, so a rerun on the same workdir
resumes exactly.

Multi-process runs (after `distributed.initialize`) execute this same function in every
process over one mesh of all devices; only process 0 writes files and prints.
"""

import contextlib
import dataclasses
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from mtsl_jax import algorithms, checkpointing, data, evaluation, loop, metric_writers
from mtsl_jax import distributed, sharding, split, validation


class TrainingInterrupted(RuntimeError):
  """SIGINT/SIGTERM arrived; a checkpoint of the last completed chunk was written.

  Attributes:
    signum: the signal's number.
  """

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


@dataclasses.dataclass
class TrainResult:
  """What a finished run returns.

  Attributes:
    state: the final state pytree (on the device).
    eval_metrics: the final evaluation (see `evaluation.summarize`).
    train_metrics: the last chunk's averaged train metrics.
    algorithm: the built Algorithm (for further evaluation in a notebook).
  """
  state: Any
  eval_metrics: dict
  train_metrics: dict
  algorithm: algorithms.Algorithm


def _next_boundary(step: int, config) -> int:
  """The next step at which something happens: log, eval, checkpoint or the end."""
  nxt = [((step // k) + 1) * k for k in (config.log_every, config.eval_every,
                                         config.checkpoint_every)]
  return min(nxt + [config.num_steps])


@contextlib.contextmanager
def _stop_on_signals():
  """Records SIGINT/SIGTERM in a flag instead of dying mid-chunk (main thread only)."""
  requested = {"signal": None}
  handlers = {}

  def handler(signum, _frame):
    if requested["signal"] is not None:  # a second signal: stop now, without a checkpoint
      raise KeyboardInterrupt
    requested["signal"] = signum

  with contextlib.ExitStack() as stack:
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        handlers[sig] = signal.signal(sig, handler)
      stack.callback(lambda: [signal.signal(s, h) for s, h in handlers.items()])
    yield requested


def checkpoint_at_boundary(checkpointer: checkpointing.Checkpointer, config, step: int,
                           state, signum: int | None, how_to_resume: str) -> None:
  """Saves at checkpoint steps and the last step; on a pending signal saves and stops.

  Args:
    checkpointer: the run's checkpointer.
    config: the experiment config (checkpoint_every, num_steps).
    step: the step just reached (a chunk boundary).
    state: the state to save.
    signum: the signal received during the chunk, or None.
    how_to_resume: the end of the interruption message.

  Raises:
    TrainingInterrupted: a signal arrived; the checkpoint is on disk.
  """
  if step % config.checkpoint_every == 0 or step == config.num_steps:
    checkpointer.save(step, state)
  if signum is not None:
    checkpointer.save(step, state)
    checkpointer.wait()
    raise TrainingInterrupted(f"stopped by signal {signum} at step {step}; checkpoint "
                              f"written to {checkpointer.directory}; {how_to_resume}", signum)


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Records the run's config as `<workdir>/config.json` (plots and sweeps read it)."""
  tmp = workdir / "config.json.tmp"
  tmp.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, workdir / "config.json")


def _param_norms(state) -> dict:
  """Parameter norms of the state's server and (per client) client sides, where present."""
  norms = {}
  if hasattr(getattr(state, "server", None), "params"):
    norms["server/param_norm"] = optax.tree.norm(state.server.params)
  if hasattr(getattr(state, "clients", None), "params"):
    norms["client/param_norm"] = split.per_client_norms(state.clients.params)
  return norms


_param_norms_jit = jax.jit(_param_norms)


def _train_summary(summary: dict, algorithm, state, step: int) -> dict:
  out = {k: np.asarray(v) for k, v in summary.items()
         if k not in ("steps_run", "bad_step", "bad_server", "bad_clients")}
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
      checkpoint of the same config, training resumes from the latest one.
    verbose: print the start-of-run report and the final accuracies.

  Returns:
    A TrainResult.

  Raises:
    validation.ConfigError, data.DataError: bad config or data (before any compilation).
    loop.NonFiniteError: the loss or a gradient became non-finite.
    checkpointing.CheckpointMismatchError: workdir holds another config's checkpoint.
    TrainingInterrupted: SIGINT/SIGTERM; the state was checkpointed first.
  """
  validation.validate_config(config)
  primary = distributed.is_primary()
  verbose = verbose and primary
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if primary:
    _write_config(config, workdir)
  federation = data.build_federation(config.data, config.seed)
  validation.validate_label_spaces(config, federation.num_classes)
  algorithm = algorithms.build_algorithm(config, federation)
  mesh = sharding.client_mesh(config.parallel.client_devices, federation.num_clients)
  train_data, test_data = data.to_device(federation)
  chunk = min(config.eval_batch_size, int(test_data.x.shape[1]))
  test_x, test_y = evaluation.pad_examples(test_data.x, test_data.y, chunk)
  test_counts = test_data.counts
  if mesh is not None:
    train_data, (test_x, test_y, test_counts) = sharding.shard_clients(
        (train_data, (test_x, test_y, test_counts)), mesh)
  evaluate = evaluation.make_evaluate(algorithm.logits, jnp.asarray(algorithm.num_classes_M),
                                      chunk)
  run_steps = loop.make_multi_step(algorithm.step)

  checkpointer = checkpointing.Checkpointer(workdir / "checkpoints", algorithm.fingerprint,
                                            config.max_checkpoints_to_keep)
  writer = None
  try:
    # The state is created, or restored, directly in its final placement (in a
    # multi-process run no process could read back the whole state to place it).
    abstract = jax.eval_shape(algorithm.init_state)
    shardings = sharding.state_shardings(abstract, mesh, federation.num_clients)
    if checkpointer.latest_step() is not None:
      state = checkpointer.restore(jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings))
    else:
      state = jax.jit(algorithm.init_state, out_shardings=shardings)()
    step = int(sharding.to_host(state.step))
    writer = (metric_writers.MetricWriter(workdir, start_step=step) if primary
              else metric_writers.DiscardingWriter())
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
    with _stop_on_signals() as stop, bar:
      while step < config.num_steps:
        target = _next_boundary(step, config)
        t0 = time.perf_counter()
        state, summary = run_steps(state, train_data, jnp.asarray(target - step, jnp.int32))
        summary = sharding.to_host(summary)
        loop.raise_if_diverged(summary)
        elapsed = time.perf_counter() - t0
        bar.update(target - step)
        step = target
        writer.write_timing(step, {"chunk_seconds": elapsed,
                                   "steps_per_second": int(summary["steps_run"]) / elapsed})
        if step % config.log_every == 0 or step == config.num_steps:
          train_metrics = _train_summary(summary, algorithm, state, step)
          writer.write(step, train_metrics)
          bar.set_postfix(loss=f"{float(train_metrics['loss']):.4f}")
        if step % config.eval_every == 0 or step == config.num_steps:
          eval_metrics = evaluate_now(state)
          writer.write(step, eval_metrics)
          bar.set_postfix(loss=f"{float(summary['loss']):.4f}",
                          acc=f"{eval_metrics['test/accuracy_mean']:.3f}")
        checkpoint_at_boundary(checkpointer, config, step, state,
                               distributed.signal_on_any_process(stop["signal"]),
                               "rerun with the same --workdir to resume")
    if eval_metrics is None:  # resumed a finished run: evaluate what was restored
      eval_metrics = evaluate_now(state)
    checkpointer.wait()
  finally:
    if writer is not None:
      writer.close()
    checkpointer.close()
  if verbose:
    _print_accuracies(eval_metrics, step)
  return TrainResult(state=state, eval_metrics=eval_metrics, train_metrics=train_metrics,
                     algorithm=algorithm)
