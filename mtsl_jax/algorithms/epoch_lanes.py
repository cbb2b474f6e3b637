"""A round of local epochs packed onto lanes: no computed-and-masked steps.

With local epochs (`config.fl.local_epochs`) client m takes k_m = ceil(n_m / B) x E steps,
and clients' data sizes differ: on a label-Dirichlet(0.1) split of MNIST over 20 clients
the largest client takes 2.7-3x the mean client's steps. Vmapping every client over the
largest client's K steps (`local_training.epoch_sgd`) computes M x K client steps for
Σ k_m real ones, the rest masked: up to two thirds of a round's work thrown away.

Here the round runs on L < M lanes instead. Each lane trains a fixed sequence of clients
one after another (decided on the host from the static step counts, longest client first
onto the least-loaded lane): at a client's first step the lane restarts from the global
model with a fresh optimizer state, at its last step the lane's parameters become that
client's upload. All lanes step together, vmapped, for T steps, so the round computes
L x T client steps, close to Σ k_m, in about the same T ≈ K sequential steps.

Each client's steps are exactly those of `epoch_sgd` (same batches, same masking of a
partial last batch, same fresh optimizer), so the result is the same round (up to
floating-point summation order); `tests/test_epoch_lanes.py` checks it against the
lock-step form for FedAvg.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtsl_jax.algorithms import local_training

PyTree = Any

# Lanes are used only when they compute at most this fraction of the lock-step round's
# client steps (below that the gathers and scatters of lanes are not worth it).
MAX_FRACTION = 0.9
# Lane counts tried above the least that could hold every step in K lane steps.
_EXTRA_LANES = 8


class LaneSchedule(NamedTuple):
  """Which client each lane trains at each lane step (host numpy, static).

  Attributes:
    client: int32 [T, L]: the client lane l trains at lane step t (0 where idle).
    local_step: int32 [T, L]: that client's local step, in [0, k_m).
    active: bool [T, L]: the lane trains at t (False once its clients are done).
    first: bool [T, L]: the client's first step (the lane restarts from the global model).
    last: bool [T, L]: the client's last step (the lane's parameters are its upload).
  """
  client: np.ndarray
  local_step: np.ndarray
  active: np.ndarray
  first: np.ndarray
  last: np.ndarray

  @property
  def num_lanes(self) -> int:
    return self.client.shape[1]

  @property
  def num_steps(self) -> int:
    return self.client.shape[0]


def _pack(steps: np.ndarray, num_lanes: int) -> list[list[int]]:
  """Longest-processing-time-first: each client, longest first, onto the least-loaded lane."""
  lanes, loads = [[] for _ in range(num_lanes)], np.zeros(num_lanes, np.int64)
  for m in np.argsort(-steps, kind="stable"):
    if steps[m] == 0:
      continue
    lane = int(np.argmin(loads))
    lanes[lane].append(int(m))
    loads[lane] += steps[m]
  return lanes


def schedule_from_lanes(steps: np.ndarray, lanes: list[list[int]]) -> LaneSchedule:
  """The LaneSchedule of clients assigned to lanes (each lane's clients in order).

  Args:
    steps: k_m, each client's local steps.
    lanes: per lane, the clients it trains, in order.

  Returns:
    The schedule, T = the most steps any lane takes.
  """
  num_steps = max(1, max(int(sum(steps[m] for m in lane)) for lane in lanes))
  shape = (num_steps, len(lanes))
  client, local_step = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  active, first, last = (np.zeros(shape, bool) for _ in range(3))
  for l, lane in enumerate(lanes):
    t = 0
    for m in lane:
      k = int(steps[m])
      client[t:t + k, l], local_step[t:t + k, l] = m, np.arange(k)
      active[t:t + k, l] = True
      first[t, l], last[t + k - 1, l] = True, True
      t += k
  return LaneSchedule(client, local_step, active, first, last)


def plan_lanes(steps_M, max_fraction: float = MAX_FRACTION) -> LaneSchedule | None:
  """The lane schedule of a round whose clients take `steps_M` steps, or None when the
  lock-step round (every client vmapped over max k_m steps) is as cheap.

  The lane count L minimises the client steps computed, L x T, over the least L that
  could fit (ceil(Σ k_m / max k_m)) and a few more (fewer sequential steps T at equal
  cost).

  Args:
    steps_M: k_m, each client's local steps this round.
    max_fraction: lanes are used only if L x T <= max_fraction x M x max k_m.

  Returns:
    The LaneSchedule, or None.
  """
  steps = np.asarray(steps_M, np.int64)
  num_clients, longest, total = len(steps), int(steps.max()), int(steps.sum())
  if longest == 0:
    return None
  least = max(1, -(-total // longest))
  best = None
  for num_lanes in range(least, min(num_clients, least + _EXTRA_LANES) + 1):
    lanes = _pack(steps, num_lanes)
    t = max(int(sum(steps[m] for m in lane)) for lane in lanes)
    if best is None or (num_lanes * t, t) < best[0]:
      best = ((num_lanes * t, t), lanes)
  (cost, _), lanes = best
  if cost > max_fraction * num_clients * longest:
    return None
  return schedule_from_lanes(steps, lanes)


def lane_epoch_sgd(loss_fn: Callable, params: PyTree, tx: optax.GradientTransformation,
                   examples_M: PyTree, plan: local_training.EpochPlan,
                   schedule: LaneSchedule) -> tuple[PyTree, jax.Array, jax.Array]:
  """Every client's round of local epochs from `params`, packed onto lanes.

  Args:
    loss_fn: `(params, batch, example_mask_B, client) -> (loss, accuracy)`; `batch` is
      `examples_M`'s client row at the step's B positions.
    params: the global model every client starts from.
    tx: the client optimizer (fresh for every client).
    examples_M: per-example arrays with a leading client axis [M, N, ...].
    plan: the round's EpochPlan [M, K, B] (`local_training.plan_epochs`).
    schedule: from `plan_lanes` for the same step counts.

  Returns:
    (every client's parameters after its steps [M, ...] (the global model for a client
    without steps), losses [M, K], accuracies [M, K]; 0 at steps a client does not take),
    as `jax.vmap(local_training.epoch_sgd)` over clients returns them.
  """
  num_clients, num_steps = plan.step_mask.shape
  fresh = tx.init(params)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  lanes_of = lambda tree: jax.tree.map(
      lambda a: jnp.broadcast_to(a, (schedule.num_lanes,) + a.shape), tree)

  def lane_step(p, opt_state, client, step, active):
    index, example_mask = plan.index[client, step], plan.example_mask[client, step]
    batch = jax.tree.map(lambda a: a[client, index], examples_M)
    (loss, acc), g = grad_fn(p, batch, example_mask, client)
    updates, new_opt_state = tx.update(g, opt_state, p)
    p, opt_state = local_training.keep_if(
        active, (optax.apply_updates(p, updates), new_opt_state), (p, opt_state))
    return p, opt_state, jnp.where(active, loss, 0.0), jnp.where(active, acc, 0.0)

  def one_step(carry, at):
    lanes, opt_states, uploads, losses, accs = carry
    client, step, active, first, last = at
    # A lane restarts from the global model at a client's first step: at a few of the
    # round's steps only, so the select over every lane's model is skipped otherwise.
    restart = jax.vmap(lambda f, new, old: local_training.keep_if(f, new, old),
                       in_axes=(0, None, 0))
    lanes, opt_states = jax.lax.cond(
        jnp.any(first), lambda s: (restart(first, params, s[0]), restart(first, fresh, s[1])),
        lambda s: s, (lanes, opt_states))
    lanes, opt_states, loss, acc = jax.vmap(lane_step)(lanes, opt_states, client, step, active)
    rows = jnp.where(active, client, num_clients)  # idle lanes write nowhere (dropped)
    losses = losses.at[rows, step].set(loss, mode="drop")
    accs = accs.at[rows, step].set(acc, mode="drop")
    done = jnp.where(last, client, num_clients)
    # Most lane steps end no client: skip the scatter of whole models then.
    uploads = jax.lax.cond(
        jnp.any(last),
        lambda u: jax.tree.map(lambda a, p: a.at[done].set(p, mode="drop"), u, lanes),
        lambda u: u, uploads)
    return (lanes, opt_states, uploads, losses, accs), None

  uploads = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_clients,) + a.shape), params)
  zeros = jnp.zeros((num_clients, num_steps), jnp.float32)
  carry = (lanes_of(params), lanes_of(fresh), uploads, zeros, zeros)
  at = tuple(jnp.asarray(a) for a in schedule[:5])
  (_, _, uploads, losses, accs), _ = jax.lax.scan(one_step, carry, at)
  return uploads, losses, accs
