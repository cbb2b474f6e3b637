"""Optax optimizers built from a config section, one per side of the split.

The server and the clients each get their own `optimizer_config` (see config_base), so
their learning rates, schedules and momenta are chosen independently: how the two
learning rates interact is the central question MTSL's theory asks.
"""

import ml_collections
import optax

OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULE_NAMES = ("constant", "cosine", "warmup_cosine", "linear")


def make_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of one optimizer section.

  Args:
    config: an optimizer section (name, learning_rate, schedule, warmup_steps, ...).
    total_steps: the run's length, over which decaying schedules go to zero.

  Returns:
    An optax schedule: step -> learning rate.
  """
  lr, steps = config.learning_rate, max(total_steps, 1)
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, steps)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, steps)
  if config.schedule == "linear":
    return optax.linear_schedule(lr, 0.0, steps)
  raise ValueError(f"schedule must be one of {SCHEDULE_NAMES}, got {config.schedule!r}")


def make_optimizer(config: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """An optax optimizer from one optimizer section.

  Weight decay is decoupled (added to the update before the learning rate scales it), so
  `sgd` with weight decay is SGDW; gradient clipping, if on, acts on the raw gradient.

  Args:
    config: an optimizer section, see `config_base.optimizer_config`.
    total_steps: the run's length, for decaying schedules.

  Returns:
    An `optax.GradientTransformation`.
  """
  lr = make_schedule(config, total_steps)
  if config.name == "sgd":
    core = optax.sgd(lr)
  elif config.name == "momentum":
    core = optax.sgd(lr, momentum=config.momentum)
  elif config.name == "nesterov":
    core = optax.sgd(lr, momentum=config.momentum, nesterov=True)
  elif config.name == "adam":
    core = optax.adam(lr)
  elif config.name == "adamw":
    core = optax.adamw(lr, weight_decay=config.weight_decay)
  else:
    raise ValueError(f"optimizer name must be one of {OPTIMIZER_NAMES}, got {config.name!r}")
  parts = []
  if config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.weight_decay > 0 and config.name != "adamw":
    # Decoupled decay scaled by the learning rate: applied before `core` rescales.
    parts.append(optax.add_decayed_weights(config.weight_decay))
  return optax.chain(*parts, core) if parts else core
