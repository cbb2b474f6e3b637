"""Many training steps in one jitted call, with averaged metrics and a divergence guard.

`make_multi_step(step)` turns any algorithm's pure `step(state, data) -> (state, metrics)`
into `run(state, data, num_steps) -> (state, summary)`: a `lax.while_loop` whose trip count is
a traced argument, so chunks of any length between logs, evaluations and checkpoints share
ONE compiled program. The state is donated.

Divergence: a step whose metrics report a non-finite value ('finite/server' false or any
'finite/clients' false) is not applied; the loop keeps the last good state, skips the rest of
the chunk and reports the step and the side, which `train.py` turns into an error. So a
diverged run never overwrites its last good state or checkpoint.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss or gradient; the message names step and side."""


def make_multi_step(step_fn: Callable[[PyTree, PyTree], tuple[PyTree, dict]],
                    donate: bool = True) -> Callable:
  """Wraps `step_fn` into a jitted multi-step runner.

  Args:
    step_fn: pure `(state, data) -> (state, metrics)`; metrics must contain the boolean
      'finite/server' (scalar) and 'finite/clients' ([M]) entries; all other entries are
      averaged over the steps run.
    donate: donate the input state's buffers to the output.

  Returns:
    `run(state, data, num_steps) -> (state, summary)`; summary holds the mean of every
    metric over the steps applied, 'steps_run', and 'bad_step' (-1 when all were finite),
    'bad_server' and 'bad_clients' describing the first non-finite step.
  """

  def run(state, data, num_steps):
    _, metrics_shape = jax.eval_shape(step_fn, state, data)
    sums0 = {k: jnp.zeros(v.shape, jnp.float32) for k, v in metrics_shape.items()
             if not k.startswith("finite/")}
    carry0 = dict(state=state, sums=sums0, done=jnp.zeros((), jnp.int32),
                  bad_step=-jnp.ones((), jnp.int32),
                  bad_server=jnp.zeros((), bool),
                  bad_clients=jnp.zeros(metrics_shape["finite/clients"].shape, bool))

    def body(carry):
      new_state, metrics = step_fn(carry["state"], data)
      ok = metrics["finite/server"] & jnp.all(metrics["finite/clients"])
      # The guard is a select, not a `lax.cond` between the new and the old state: a select
      # fuses into the elementwise optimizer updates, which then write the state in place,
      # where each branch of a cond returned its own copy of the whole state (two copies of
      # every client's parameters per step; without them the MLP at M = 1000 clients runs
      # 14% faster on a CPU and needs 3/4 of the memory; benchmarks/RESULTS.md).
      keep = lambda new, old: jnp.where(ok, new, old)
      return dict(
          state=jax.tree.map(keep, new_state, carry["state"]),
          sums={k: carry["sums"][k] + jnp.where(ok, metrics[k].astype(jnp.float32), 0.0)
                for k in carry["sums"]},
          done=carry["done"] + ok.astype(jnp.int32),
          bad_step=jnp.where(ok, -1, carry["state"].step.astype(jnp.int32)),
          bad_server=~ok & ~metrics["finite/server"],
          bad_clients=~ok & ~metrics["finite/clients"])

    # A while loop rather than a fixed trip count: the chunk ends at its first non-finite
    # step, so the steps after it are not computed.
    out = jax.lax.while_loop(
        lambda c: (c["done"] < num_steps) & (c["bad_step"] < 0), body, carry0)
    done = jnp.maximum(out["done"], 1).astype(jnp.float32)
    summary = {k: v / done for k, v in out["sums"].items()}
    summary.update(steps_run=out["done"], bad_step=out["bad_step"],
                   bad_server=out["bad_server"], bad_clients=out["bad_clients"])
    return out["state"], summary

  return jax.jit(run, donate_argnums=(0,) if donate else ())


def raise_if_diverged(summary: dict) -> None:
  """Raises NonFiniteError naming the step and side if the chunk hit a non-finite value.

  Args:
    summary: host copy of a `run` summary.
  """
  bad_step = int(summary["bad_step"])
  if bad_step < 0:
    return
  clients = [int(i) for i in np.flatnonzero(np.asarray(summary["bad_clients"]))]
  sides = (["server"] if bool(summary["bad_server"]) else []) + [f"client {m}" for m in clients]
  raise NonFiniteError(
      f"non-finite loss or gradient at step {bad_step + 1} on: {', '.join(sides)}; "
      "the state was kept at the last finite step (lower the learning rate of that side)")
