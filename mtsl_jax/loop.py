"""Many training steps in one jitted call, with a metric window and a divergence guard.

`make_multi_step(step)` turns any algorithm's pure `step(state, data) -> (state, metrics)`
into a `Runner`: `run(state, data, num_steps, window) -> (state, summary)`, a
`lax.while_loop` whose trip count is a traced argument, so chunks of any length between
logs, evaluations and checkpoints share ONE compiled program. The state is donated.

Metric window: the sums of every metric since the last log travel in and out of each
call (`window`), so a logged average covers exactly the steps since the previous log,
however the steps between were cut into chunks (by evaluations, checkpoints or a resume:
the window is checkpointed with the state). Accumulating inside the loop, in step order,
makes the logged values bitwise independent of the chunking.

Divergence: a step whose metrics report a non-finite value (any `finite/*` flag false:
the algorithms flag non-finite losses and gradients, the federated ones their aggregated
models) is not applied; the loop keeps the last good state, skips the rest of the chunk
and reports the step and every flag of that step. Once per chunk the whole final state is
checked too (an update can overflow a parameter while the loss and gradients stay
finite). `raise_if_diverged` turns either into an error naming what became non-finite
where, before the caller logs or saves anything of the chunk: a diverged run never
overwrites its last good checkpoint.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtsl_jax import errors, split

PyTree = Any
FLAG_PREFIX = "finite/"


NonFiniteError = errors.NonFiniteError  # defined in `errors.py`; public here too


def _is_flag(key: str) -> bool:
  return key.startswith(FLAG_PREFIX)


def nonfinite_parts(state: PyTree) -> list[str]:
  """Which parts of a state hold non-finite parameters (host-side; for error messages).

  Args:
    state: an algorithm's state, with `server` and/or `clients` sides (client leaves
      stacked on a leading client axis), or any pytree.

  Returns:
    'the server's parameters' and/or "client(s) [..]'s parameters", or 'the parameters'
    when the state has no such sides.
  """
  finite = lambda tree: all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
                            if np.issubdtype(np.asarray(x).dtype, np.inexact))
  parts = []
  if hasattr(state, "server") and not finite(state.server):
    parts.append("the server's parameters")
  if hasattr(state, "clients"):
    groups = state.clients.params if isinstance(state.clients.params, tuple) else (
        state.clients.params,)
    bad, offset = [], 0
    for group in groups:
      size = len(jax.tree.leaves(group)[0])
      bad += [offset + m for m in range(size)
              if not finite(jax.tree.map(lambda x, m=m: np.asarray(x)[m], group))]
      offset += size
    if bad:
      parts.append(f"the parameters of client(s) {bad}")
  return parts or ["the parameters"]


class Runner:
  """A jitted multi-step runner (see the module docstring); built by `make_multi_step`.

  Call it as `run(state, data, num_steps, window=None)`; `window=None` starts an empty
  window (see `empty_window`). Returns `(state, summary)`: `summary['mean']` holds the
  window's mean of every metric, `summary['window']` the window to pass to the next call
  (or to reset with None after a log), `summary['steps_run']` the steps applied in this
  call, `summary['bad_step']` the state step of the first non-finite step (-1 if none),
  `summary['flags']` every `finite/*` flag of that step (all True if none),
  `summary['state_finite']` whether the returned state's parameters are all finite, and
  `summary['last_step']` the returned state's step.
  """

  def __init__(self, step_fn: Callable, donate: bool):
    self._step_fn = step_fn
    self._jitted = jax.jit(self._run, donate_argnums=(0,) if donate else ())
    self._empty_windows = {}

  def empty_window(self, state, data) -> dict:
    """Zero sums for every non-flag metric of `step_fn`, and a zero step count.

    Cached per argument shapes: finding the metrics' shapes traces the step, which a
    caller passing `window=None` on every call should not pay each time.
    """
    key = tuple((jax.tree.structure(t),
                 tuple((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x))))
                       for x in jax.tree.leaves(t)))
                for t in (state, data))
    if key not in self._empty_windows:
      _, shapes = jax.eval_shape(self._step_fn, state, data)
      self._empty_windows[key] = {
          "sums": {k: np.zeros(v.shape, np.float32) for k, v in shapes.items()
                   if not _is_flag(k)},
          "count": np.zeros((), np.int32)}
    return self._empty_windows[key]

  def _run(self, state, data, num_steps, window):
    _, shapes = jax.eval_shape(self._step_fn, state, data)
    carry0 = dict(state=state, window=window, done=jnp.zeros((), jnp.int32),
                  bad_step=-jnp.ones((), jnp.int32),
                  flags={k: jnp.ones(v.shape, bool) for k, v in shapes.items() if _is_flag(k)})

    def body(carry):
      new_state, metrics = self._step_fn(carry["state"], data)
      flags = {k: v for k, v in metrics.items() if _is_flag(k)}
      ok = jnp.all(jnp.stack([jnp.all(v) for v in flags.values()]))
      # The guard is a select, not a `lax.cond` between the new and the old state: a select
      # fuses into the elementwise optimizer updates, which then write the state in place,
      # where each branch of a cond returned its own copy of the whole state (two copies of
      # every client's parameters per step; without them the MLP at M = 1000 clients runs
      # 14% faster on a CPU and needs 3/4 of the memory; benchmarks/RESULTS.md).
      keep = lambda new, old: jnp.where(ok, new, old)
      sums = carry["window"]["sums"]
      return dict(
          state=jax.tree.map(keep, new_state, carry["state"]),
          window={"sums": {k: sums[k] + jnp.where(ok, metrics[k].astype(jnp.float32), 0.0)
                           for k in sums},
                  "count": carry["window"]["count"] + ok.astype(jnp.int32)},
          done=carry["done"] + ok.astype(jnp.int32),
          bad_step=jnp.where(ok, -1, carry["state"].step.astype(jnp.int32)),
          flags={k: jnp.where(ok, True, v) for k, v in flags.items()})

    # A while loop rather than a fixed trip count: the chunk ends at its first non-finite
    # step, so the steps after it are not computed.
    out = jax.lax.while_loop(
        lambda c: (c["done"] < num_steps) & (c["bad_step"] < 0), body, carry0)
    count = jnp.maximum(out["window"]["count"], 1).astype(jnp.float32)
    # Once per chunk, a pass over the whole state: an update can overflow a parameter while
    # the loss and gradients stay finite. The next step's loss would show it, but not after
    # a chunk's last step, whose state is about to be logged and checkpointed.
    summary = {"mean": {k: v / count for k, v in out["window"]["sums"].items()},
               "window": out["window"], "steps_run": out["done"],
               "bad_step": out["bad_step"], "flags": out["flags"],
               "state_finite": split.all_finite(out["state"]), "last_step": out["state"].step}
    return out["state"], summary

  def __call__(self, state, data, num_steps, window=None):
    if window is None:
      window = self.empty_window(state, data)
    return self._jitted(state, data, jnp.asarray(num_steps, jnp.int32), window)

  def lower(self, state, data, num_steps):
    """The lowered program for these argument shapes (memory and cost analyses)."""
    return self._jitted.lower(state, data, jnp.asarray(num_steps, jnp.int32),
                              self.empty_window(state, data))

  def _cache_size(self) -> int:
    return self._jitted._cache_size()  # pylint: disable=protected-access


def make_multi_step(step_fn: Callable[[PyTree, PyTree], tuple[PyTree, dict]],
                    donate: bool = True) -> Runner:
  """Wraps `step_fn` into a jitted multi-step runner.

  Args:
    step_fn: pure `(state, data) -> (state, metrics)`; metrics named `finite/...` are
      boolean flags (True where finite; any False rejects the step); all other entries
      are summed into the metric window. The state must have a scalar `step`.
    donate: donate the input state's buffers to the output.

  Returns:
    A `Runner`.
  """
  return Runner(step_fn, donate)


def _indices(flag) -> list[int]:
  return [int(i) for i in np.flatnonzero(~np.asarray(flag, bool).reshape(-1))]


def describe_flags(flags: dict) -> list[str]:
  """Human-readable phrases for the false entries of one bad step's `finite/*` flags.

  `finite/losses` [M] -> the loss of those tasks; `finite/server` -> the server's gradient
  or update (the aggregated model, for the federated baselines); `finite/clients` [M] ->
  those clients' gradients or updates; any other flag by its name.

  Args:
    flags: host copies of the flags of one (replica's) bad step.

  Returns:
    One phrase per kind of flag that has false entries (empty when all are true).
  """
  out = []
  if _indices(flags.get("finite/losses", True)):
    out.append(f"the loss of task(s) {_indices(flags['finite/losses'])}")
  if _indices(flags.get("finite/server", True)):
    out.append("the server's gradient or update")
  if _indices(flags.get("finite/clients", True)):
    out.append(f"the gradients or updates of client(s) "
               f"{_indices(flags['finite/clients'])}")
  for key in sorted(set(flags) - {"finite/losses", "finite/server", "finite/clients"}):
    if _indices(flags[key]):
      out.append(f"{key[len(FLAG_PREFIX):]} {_indices(flags[key])}")
  return out


def advice(flags: dict) -> str:
  """What to change after a divergence with these flags (inputs are checked finite when
  the data are built, so a non-finite value means the parameters diverged)."""
  server = bool(_indices(flags.get("finite/server", True)))
  clients = bool(_indices(flags.get("finite/clients", True)))
  losses = bool(_indices(flags.get("finite/losses", True)))
  if server and not clients and not losses:
    side = "server_optimizer.learning_rate"
  elif clients and not server and not losses:
    side = "client_optimizer.learning_rate"
  else:
    side = "server_optimizer.learning_rate and/or client_optimizer.learning_rate"
  return (f"the data were checked finite, so the parameters diverged: lower {side}, or "
          "clip gradients (grad_clip_norm)")


def raise_if_diverged(summary: dict, state: PyTree = None) -> None:
  """Raises NonFiniteError naming the step and what became non-finite, if anything did.

  Args:
    summary: host copy of a `Runner` summary.
    state: the chunk's final state (to name the parts with non-finite parameters).

  Raises:
    NonFiniteError: the chunk stopped at a non-finite step, or ended with non-finite
      parameters.
  """
  bad_step = int(summary["bad_step"])
  if bad_step < 0 and bool(summary["state_finite"]):
    return
  if bad_step < 0:
    parts = nonfinite_parts(jax.device_get(state)) if state is not None else ["the parameters"]
    flags = {"finite/server": np.asarray(not any("server" in p for p in parts)),
             "finite/clients": np.asarray([not any("client" in p for p in parts)])}
    raise NonFiniteError(
        f"non-finite values after step {int(summary['last_step'])}: an update overflowed "
        f"{', '.join(parts)} (the loss and gradients were finite); nothing of this chunk "
        f"was saved; {advice(flags)}")
  flags = summary["flags"]
  kept = (f"the state was kept at step {bad_step}" if bool(summary["state_finite"]) else
          f"the state kept at step {bad_step} already held non-finite parameters (an update "
          "overflowed before the loss did)")
  raise NonFiniteError(
      f"non-finite values at step {bad_step + 1} in: {'; '.join(describe_flags(flags))}; "
      f"{kept}; nothing of this chunk was saved; {advice(flags)}")
