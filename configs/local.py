r"""Local-only training on Synthetic(1, 1): every client its own MLP 60-64-64-10, no communication.

2000 steps of SGD (config.client_optimizer, lr 0.1, batch 32) per client: the
no-collaboration reference.

Command:
  python launch/train.py --config configs/local.py --workdir workdirs/local
  (`--config configs/default.py --config.algorithm=local` also runs, with the default's
  step count, fl fields and learning rates instead of the ones below)

Measured (2-core CPU shared with other jobs, seed 0, about 22 s in total): final mean
per-task test accuracy 0.908, worst task 0.600 (MTSL's default: 0.896 / 0.600).
"""

from mtsl_jax import config_base


def get_config():
  """The local baseline on the default data and model."""
  config = config_base.base_config()
  config.algorithm = "local"
  config.num_steps = 2000
  config.log_every = 200
  config.eval_every = 500
  config.checkpoint_every = 1000
  config.client_optimizer.learning_rate = 0.1
  return config
