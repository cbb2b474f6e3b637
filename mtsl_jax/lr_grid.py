"""A grid of (server, client) learning rates trained as ONE vmapped, jitted program.

The learning rates live in the optimizer states (`optax.inject_hyperparams`), so every grid
point has the same pytree structure and the grid is one more leading axis on the state:
`jax.vmap` of the ordinary MTSL step (`split.make_train_step`) over that axis trains all
points at once, and `lax.scan` runs many steps and periodic evaluations inside the one
program. Every point starts from the same initial parameters and draws the same
minibatches (same seed), so points differ only in their learning rates. Grids too large
for memory run in chunks of points (`run_grid(..., chunk_size=...)`).
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mtsl_jax import data, evaluation, split, validation
from mtsl_jax.algorithms import mtsl

PyTree = Any


def injectable_optimizer(config: ml_collections.ConfigDict,
                         field: str = "server_optimizer") -> optax.GradientTransformation:
  """The optimizer of one side with its learning rate in the state (constant schedule).

  Args:
    config: an optimizer section; 'sgd', 'momentum', 'nesterov' or 'adam', constant
      schedule, no weight decay and no clipping (the sweep varies the rate alone).
    field: the section's name, for error messages.

  Returns:
    An `optax.inject_hyperparams` optimizer; its state's hyperparams['learning_rate'] is
    the rate.
  """
  if config.schedule != "constant" or config.weight_decay > 0 or config.grad_clip_norm > 0:
    raise validation.ConfigError(field, "the learning-rate sweep needs a constant schedule, "
                                 "no weight decay and no gradient clipping")
  lr = config.learning_rate
  if config.name == "sgd":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=lr)
  if config.name in ("momentum", "nesterov"):
    return optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
        learning_rate=lr, momentum=config.momentum, nesterov=config.name == "nesterov")
  if config.name == "adam":
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
  raise validation.ConfigError(f"{field}.name", "the sweep supports sgd, momentum, nesterov "
                               f"and adam, not {config.name!r}")


def _with_lr(opt_state, lr):
  return opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=lr))


@dataclasses.dataclass(frozen=True)
class GridProblem:
  """What a grid run needs: the step context, the step, the data and the initial state.

  Attributes:
    ctx: the MTSL step context with injectable optimizers.
    step: `split.make_train_step(ctx, data.sample_batches)`.
    init_state: the single initial state shared by every grid point.
    train, test: device data.
    test_counts: test examples per client (host).
  """
  ctx: split.StepContext
  step: Callable
  init_state: split.SplitState
  train: data.ClientArrays
  test: data.ClientArrays
  test_counts: np.ndarray


def build_problem(config: ml_collections.ConfigDict, federation: data.Federation) -> GridProblem:
  """The MTSL problem of `config` with learning rates held in the optimizer states.

  Builds the same split model, task weights and client multipliers as
  `algorithms.mtsl.build`, with `injectable_optimizer` in place of the configured ones.
  """
  validation.require_one_client_architecture(config, "the learning-rate grid")
  num_classes = np.asarray(federation.num_classes, np.int32)
  multipliers = config.split.client_lr_multipliers or (1.0,) * federation.num_clients
  ctx = split.StepContext(
      split=split.make_split_model(config.model, config.split, int(num_classes.max())),
      server_tx=injectable_optimizer(config.server_optimizer, "server_optimizer"),
      client_tx=injectable_optimizer(config.client_optimizer, "client_optimizer"),
      num_classes_M=jnp.asarray(num_classes),
      weights_M=jnp.asarray(mtsl.task_weights(config.split.task_weights,
                                              federation.train_counts)),
      lr_multipliers_M=jnp.asarray(multipliers, jnp.float32),
      batch_size=config.batch_size,
      implementation=config.split.implementation)
  init = jax.jit(lambda: split.init_state(ctx, config.seed, tuple(federation.input_shape)))()
  train, test = data.to_device(federation)
  return GridProblem(ctx, split.make_train_step(ctx, data.sample_batches), init, train,
                     test, federation.test_counts)


def grid_states(state: split.SplitState, server_lrs_G, client_lrs_G) -> split.SplitState:
  """G copies of `state` along a new leading axis, point g with rates (η_s[g], η_c[g])."""
  server_lrs = jnp.asarray(server_lrs_G, jnp.float32)
  client_lrs = jnp.asarray(client_lrs_G, jnp.float32)
  g = server_lrs.shape[0]
  tiled = jax.tree.map(lambda a: jnp.broadcast_to(a, (g,) + a.shape), state)
  num_clients = jax.tree.leaves(state.clients.params)[0].shape[0]
  return tiled.replace(
      server=tiled.server.replace(opt_state=_with_lr(tiled.server.opt_state, server_lrs)),
      clients=tiled.clients.replace(opt_state=_with_lr(
          tiled.clients.opt_state,
          jnp.broadcast_to(client_lrs[:, None], (g, num_clients)))))


def make_grid_runner(problem: GridProblem, eval_every: int, num_evals: int) -> Callable:
  """`run(states_G) -> (states_G, losses [G, E], accuracies [G, E])`, jitted and vmapped.

  Every point runs `num_evals` chunks of `eval_every` MTSL steps; after each chunk it
  records the mean weighted train loss of the chunk's minibatches and the mean per-task
  test accuracy.

  Args:
    problem: the grid problem.
    eval_every: steps per chunk.
    num_evals: chunks (E).

  Returns:
    The jitted runner.
  """
  ctx = problem.ctx
  test_x, test_y = problem.test.x, problem.test.y
  logits = lambda s, x: ctx.split.logits(s.server.params, s.clients.params, x)
  evaluate = evaluation.make_evaluate(logits, ctx.num_classes_M, int(test_x.shape[1]))

  def one_point(state):
    def one_step(state, _):
      state, metrics = problem.step(state, problem.train)
      return state, metrics["loss"]

    def chunk(state, _):
      state, losses = jax.lax.scan(one_step, state, None, length=eval_every)
      raw = evaluate(state, test_x, test_y, problem.test.counts)
      acc = jnp.mean(raw["correct"] / problem.test.counts)
      return state, (jnp.mean(losses), acc)

    state, (losses, accs) = jax.lax.scan(chunk, state, None, length=num_evals)
    return state, losses, accs

  return jax.jit(jax.vmap(one_point))


def run_grid(problem: GridProblem, server_lrs_G, client_lrs_G, eval_every: int,
             num_evals: int, chunk_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Trains every grid point; in chunks of `chunk_size` points when it is positive.

  Args:
    problem: the grid problem.
    server_lrs_G, client_lrs_G: the rates of the G points.
    eval_every, num_evals: see `make_grid_runner`.
    chunk_size: points per vmapped program; 0 runs all G at once. The last chunk is
      padded by repeating its last point, so every chunk shares one compiled program.

  Returns:
    (losses [G, E], accuracies [G, E]) as numpy; a diverged point has non-finite losses.
  """
  server_lrs, client_lrs = np.asarray(server_lrs_G), np.asarray(client_lrs_G)
  total = server_lrs.shape[0]
  size = chunk_size if 0 < chunk_size < total else total
  runner = make_grid_runner(problem, eval_every, num_evals)
  losses, accs = [], []
  for start in range(0, total, size):
    idx = np.minimum(np.arange(start, start + size), total - 1)
    _, loss, acc = runner(grid_states(problem.init_state, server_lrs[idx], client_lrs[idx]))
    keep = min(size, total - start)
    losses.append(np.asarray(loss)[:keep])
    accs.append(np.asarray(acc)[:keep])
  return np.concatenate(losses), np.concatenate(accs)


def steps_to_target(accs_GxE: np.ndarray, losses_GxE: np.ndarray, target: float,
                    eval_every: int) -> np.ndarray:
  """First evaluated step with mean test accuracy ≥ target (inf if never or diverged)."""
  ok = (accs_GxE >= target) & np.isfinite(losses_GxE)
  first = np.argmax(ok, axis=1)
  return np.where(ok.any(axis=1), (first + 1) * eval_every, np.inf)
