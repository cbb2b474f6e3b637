"""Optax optimizers built from a config section, one per side of the split.

The server and the clients each get their own `optimizer_config` (see config_base), so
their learning rates, schedules and momenta are chosen independently: how the two
learning rates interact is the central question MTSL's theory asks.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "cosine", "warmup_cosine", "linear")


def make_schedule(config: ml_collections.ConfigDict, total_steps: int,
                  learning_rate=None) -> optax.Schedule:
  """The learning-rate schedule of one optimizer section.

  Args:
    config: an optimizer section (name, learning_rate, schedule, warmup_steps, ...).
    total_steps: the run's length, over which decaying schedules go to zero.
    learning_rate: the peak rate, if not `config.learning_rate` (a traced value when the
      rate is held in the optimizer state).

  Returns:
    An optax schedule: step -> learning rate.
  """
  lr = config.learning_rate if learning_rate is None else learning_rate
  steps = max(total_steps, 1)
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, steps)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, steps)
  if config.schedule == "linear":
    return optax.linear_schedule(lr, 0.0, steps)
  raise ValueError(f"schedule must be one of {SCHEDULE_NAMES}, got {config.schedule!r}")


def _direction(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer's update direction before weight decay and the learning rate."""
  if config.name == "sgd":
    return optax.identity()
  if config.name in ("momentum", "nesterov"):
    return optax.trace(decay=config.momentum, nesterov=config.name == "nesterov")
  if config.name in ("adam", "adamw"):
    return optax.scale_by_adam()
  raise ValueError(f"optimizer name must be one of {OPTIMIZER_NAMES}, got {config.name!r}")


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """An optax optimizer from one optimizer section.

  With `config.learning_rate_in_state` the peak learning rate is a value in the optimizer
  state (`optax.inject_hyperparams`) instead of a constant of the program: runs that
  differ only in their learning rates then compile to the same program, so a replica
  group (`replicas.py`: learning-rate grids) trains them as one vmapped program. The
  updates are the same either way.

  Weight decay is decoupled for every optimizer (Loshchilov & Hutter, 2019): the update
  is `-lr * (direction + weight_decay * params)`, where the direction is the gradient
  (sgd), its momentum trace (momentum, nesterov) or Adam's scaled moment (adam, adamw);
  the decay never enters the momentum or Adam's moments. So `sgd` with weight decay is
  SGDW, `momentum` SGDW with momentum, and `adam` with weight decay is AdamW (the names
  `adam` and `adamw` build the same optimizer). Gradient clipping, if on, acts on the raw
  gradient.

  Args:
    config: an optimizer section, see `config_base.optimizer_config`.
    total_steps: the run's length, for decaying schedules.

  Returns:
    An `optax.GradientTransformation`.
  """
  if config.get("learning_rate_in_state", False):
    build = functools.partial(_make_optimizer, config, total_steps)
    return optax.inject_hyperparams(build)(learning_rate=config.learning_rate)
  return _make_optimizer(config, total_steps)


def _make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                    learning_rate=None) -> optax.GradientTransformation:
  """`make_optimizer` with the peak rate given (None: the config's)."""
  lr = make_schedule(config, total_steps, learning_rate)
  if config.weight_decay > 0:
    core = optax.chain(_direction(config), optax.add_decayed_weights(config.weight_decay),
                       optax.scale_by_learning_rate(lr))
  elif config.name == "sgd":
    core = optax.sgd(lr)
  elif config.name in ("momentum", "nesterov"):
    core = optax.sgd(lr, momentum=config.momentum, nesterov=config.name == "nesterov")
  elif config.name in ("adam", "adamw"):
    core = optax.adam(lr)
  else:
    raise ValueError(f"optimizer name must be one of {OPTIMIZER_NAMES}, got {config.name!r}")
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), core)
  return core


def with_learning_rate(opt_state, learning_rate: float):
  """`opt_state` of a `learning_rate_in_state` optimizer with its peak rate replaced.

  Runs that differ only in their rates then start from one initialization: the rate is
  the only value that differs between their initial optimizer states.

  Args:
    opt_state: an optimizer state (of one side; per-client states stacked).
    learning_rate: the new peak rate.

  Returns:
    The state with every injected 'learning_rate' set to `learning_rate` (same shapes).
  """
  injected = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)

  def replace(node):
    if not isinstance(node, injected):
      return node
    old = node.hyperparams["learning_rate"]
    return node._replace(hyperparams={**node.hyperparams,
                                      "learning_rate": jnp.full_like(old, learning_rate)})

  return jax.tree.map(replace, opt_state, is_leaf=lambda n: isinstance(n, injected))
