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

Replicas: with `replicated=True` the runner trains a `Replicas` group (several runs of one
program stacked on a leading axis, `replicas.py`) and the guard acts per replica: a
replica that hits a non-finite value is frozen at its last good state and reported
(`divergence_message` on its slice of the summary) while the others go on.
"""

from typing import Any, Callable

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from mtsl_jax import errors, split_state

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

  Replicated (`replicated=True`): the state is a `Replicas` and the step function takes
  and returns its stacked `states` (every leaf with a leading replica axis R; metrics and
  flags likewise). Each replica has its own guard: at its first non-finite step a replica
  is frozen (its state kept at the last good step, its metrics no longer summed) and the
  others go on; the chunk ends early only when every replica is frozen. The summary's
  entries then have a leading R axis: 'bad_step' is the step at which a replica froze IN
  THIS CHUNK (-1 otherwise), 'flags' that step's flags, 'state_finite' per replica; the
  returned `Replicas.frozen` holds every replica frozen so far.
  """

  def __init__(self, step_fn: Callable, donate: bool, replicated: bool = False,
               max_traces: int | None = None):
    self._step_fn = step_fn
    self._replicated = replicated
    self._max_traces = max_traces
    self.traces = 0  # how often the program was traced (compiled), see `_run`
    self._jitted = jax.jit(self._run, donate_argnums=(0,) if donate else ())
    self._empty_windows = {}

  def _states(self, state):
    return state.states if self._replicated else state

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
      _, shapes = jax.eval_shape(self._step_fn, self._states(state), data)
      count_shape = state.frozen.shape if self._replicated else ()
      self._empty_windows[key] = {
          "sums": {k: np.zeros(v.shape, np.float32) for k, v in shapes.items()
                   if not _is_flag(k)},
          "count": np.zeros(count_shape, np.int32)}
    return self._empty_windows[key]

  def _run(self, state, data, num_steps, window):
    # Python code here runs only while jax traces the program, so this counts traces.
    self.traces += 1
    if self._max_traces is not None and self.traces > self._max_traces:
      raise AssertionError(f"the multi-step program was traced {self.traces} times, more "
                           f"than the {self._max_traces} expected: an argument's shape, "
                           "dtype or structure changed between calls")
    states = self._states(state)
    _, shapes = jax.eval_shape(self._step_fn, states, data)
    # `frozen` is [R] for replicas and a scalar otherwise; the same code serves both.
    frozen = state.frozen if self._replicated else jnp.zeros((), bool)
    per_replica = lambda x: x.reshape(frozen.shape + (-1,)).all(axis=-1)
    expand = lambda mask, x: mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    carry0 = dict(states=states, window=window, done=jnp.zeros((), jnp.int32),
                  frozen=frozen, bad_step=-jnp.ones(frozen.shape, jnp.int32),
                  flags={k: jnp.ones(v.shape, bool) for k, v in shapes.items() if _is_flag(k)})

    def body(carry):
      new_states, metrics = self._step_fn(carry["states"], data)
      flags = {k: v for k, v in metrics.items() if _is_flag(k)}
      ok = jnp.all(jnp.stack([per_replica(v) for v in flags.values()]), axis=0)
      live = ok & ~carry["frozen"]
      newly_bad = ~ok & ~carry["frozen"]
      # The guard is a select, not a `lax.cond` between the new and the old state: a select
      # fuses into the elementwise optimizer updates, which then write the state in place,
      # where each branch of a cond returned its own copy of the whole state (two copies of
      # every client's parameters per step; without them the MLP at M = 1000 clients runs
      # 14% faster on a CPU and needs 3/4 of the memory; benchmarks/RESULTS.md).
      keep = lambda new, old: jnp.where(expand(live, new), new, old)
      sums = carry["window"]["sums"]
      return dict(
          states=jax.tree.map(keep, new_states, carry["states"]),
          window={"sums": {k: sums[k] + jnp.where(expand(live, metrics[k]),
                                                  metrics[k].astype(jnp.float32), 0.0)
                           for k in sums},
                  "count": carry["window"]["count"] + live.astype(jnp.int32)},
          done=carry["done"] + jnp.any(live).astype(jnp.int32),
          frozen=carry["frozen"] | newly_bad,
          bad_step=jnp.where(newly_bad, carry["states"].step.astype(jnp.int32),
                             carry["bad_step"]),
          flags={k: jnp.where(expand(newly_bad, v), v, carry["flags"][k])
                 for k, v in flags.items()})

    # A while loop rather than a fixed trip count: the chunk ends when every replica (the
    # one run) has hit a non-finite step, so the steps after it are not computed.
    out = jax.lax.while_loop(
        lambda c: (c["done"] < num_steps) & jnp.any(~c["frozen"]), body, carry0)
    count = jnp.maximum(out["window"]["count"], 1).astype(jnp.float32)
    # Once per chunk, a pass over the whole state: an update can overflow a parameter while
    # the loss and gradients stay finite. The next step's loss would show it, but not after
    # a chunk's last step, whose state is about to be logged and checkpointed.
    finite = jax.vmap(split_state.all_finite) if self._replicated else split_state.all_finite
    # (A scalar count divides as it is: a reshaped one compiles to other rounding.)
    mean = lambda v: v / (expand(count, v) if self._replicated else count)
    summary = {"mean": {k: mean(v) for k, v in out["window"]["sums"].items()},
               "window": out["window"], "steps_run": out["done"],
               "bad_step": out["bad_step"], "flags": out["flags"],
               "state_finite": finite(out["states"]), "last_step": out["states"].step}
    if self._replicated:
      return Replicas(states=out["states"], frozen=out["frozen"]), summary
    return out["states"], summary

  def __call__(self, state, data, num_steps, window=None):
    if window is None:
      window = self.empty_window(state, data)
    return self._jitted(state, data, jnp.asarray(num_steps, jnp.int32), window)

  def lower(self, state, data, num_steps):
    """The lowered program for these argument shapes (memory and cost analyses)."""
    return self._jitted.lower(state, data, jnp.asarray(num_steps, jnp.int32),
                              self.empty_window(state, data))


@struct.dataclass
class Replicas:
  """The state of a replica group (`replicas.py`): R runs of one program, stacked.

  Attributes:
    states: every replica's state stacked on a leading axis [R, ...].
    frozen: bool [R], replicas stopped by a non-finite value (kept at their last good
      state and no longer trained; checkpointed, so a resumed group keeps them frozen).
  """
  states: PyTree
  frozen: jax.Array


def make_multi_step(step_fn: Callable[[PyTree, PyTree], tuple[PyTree, dict]],
                    donate: bool = True, replicated: bool = False,
                    max_traces: int | None = None) -> Runner:
  """Wraps `step_fn` into a jitted multi-step runner.

  Args:
    step_fn: pure `(state, data) -> (state, metrics)`; metrics named `finite/...` are
      boolean flags (True where finite; any False rejects the step); all other entries
      are summed into the metric window. The state must have a scalar `step`.
    donate: donate the input state's buffers to the output.
    replicated: `step_fn` works on stacked replica states (see `Runner`).
    max_traces: if set, tracing the runner's program more often raises AssertionError
      (tests check that chunks of any length share one program; `Runner.traces` counts).

  Returns:
    A `Runner`.
  """
  return Runner(step_fn, donate, replicated, max_traces)


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


def divergence_message(summary: dict, state: PyTree = None,
                       group: bool = False) -> str | None:
  """What became non-finite where, from one run's (or one replica's) chunk summary.

  Args:
    summary: host copy of a `Runner` summary (for a replica: its slice of each entry).
    state: the chunk's final state (to name the parts with non-finite parameters).
    group: the summary is a replica's: it is frozen while the others go on.

  Returns:
    None when the chunk ended finite; otherwise one line naming the step, what became
    non-finite, what was kept, and what to change.
  """
  bad_step = int(summary["bad_step"])
  if bad_step < 0 and bool(summary["state_finite"]):
    return None
  saved = ("this replica is frozen there and the others go on" if group else
           "nothing of this chunk was saved")
  if bad_step < 0:
    parts = nonfinite_parts(jax.device_get(state)) if state is not None else ["the parameters"]
    flags = {"finite/server": np.asarray(not any("server" in p for p in parts)),
             "finite/clients": np.asarray([not any("client" in p for p in parts)])}
    return (f"non-finite values after step {int(summary['last_step'])}: an update "
            f"overflowed {', '.join(parts)} (the loss and gradients were finite); {saved}; "
            f"{advice(flags)}")
  flags = summary["flags"]
  kept = (f"the state was kept at step {bad_step}" if bool(summary["state_finite"]) else
          f"the state kept at step {bad_step} already held non-finite parameters (an update "
          "overflowed before the loss did)")
  return (f"non-finite values at step {bad_step + 1} in: {'; '.join(describe_flags(flags))}; "
          f"{kept}; {saved}; {advice(flags)}")


def raise_if_diverged(summary: dict, state: PyTree = None) -> None:
  """Raises NonFiniteError with `divergence_message`, if the chunk did not end finite.

  Args:
    summary: host copy of a `Runner` summary.
    state: the chunk's final state (to name the parts with non-finite parameters).

  Raises:
    NonFiniteError: the chunk stopped at a non-finite step, or ended with non-finite
      parameters.
  """
  message = divergence_message(summary, state)
  if message is not None:
    raise NonFiniteError(message)
