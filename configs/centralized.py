r"""Centralized training on the union of the Synthetic(1, 1) clients' data (weighted by w_m).

One MLP 60-64-64-10 trained by SGD (config.server_optimizer, lr 0.1) on every client's
minibatch of 32 per step, 2000 steps: the no-communication-limit reference of one model.

Command:
  python launch/train.py --config configs/centralized.py --workdir workdirs/centralized
  (`--config configs/default.py --config.algorithm=centralized` also runs, with the default's
  step count, fl fields and learning rates instead of the ones below)

Measured (2-core CPU shared with other jobs, seed 0, about 20 s in total): final mean
per-task test accuracy 0.894, worst task 0.600 (MTSL's default: 0.896 / 0.600).
"""

from mtsl_jax import config_base


def get_config():
  """The centralized baseline on the default data and model."""
  config = config_base.base_config()
  config.algorithm = "centralized"
  config.num_steps = 2000
  config.log_every = 200
  config.eval_every = 500
  config.checkpoint_every = 1000
  config.server_optimizer.learning_rate = 0.1
  return config
