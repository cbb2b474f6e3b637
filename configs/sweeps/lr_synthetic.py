r"""Server and client learning rates of MTSL on the Synthetic default, 3 seeds.

A 3 x 3 grid over (server LR, client LR) times 3 seeds = 27 runs of configs/default.py
shortened to 1000 steps.

Command:
  python launch/sweep.py --sweep configs/sweeps/lr_synthetic.py \
      --dir workdirs/sweeps/lr_synthetic
"""

from mtsl_jax import config_base


def get_config():
  """The base experiment."""
  config = config_base.base_config()
  config.num_steps = 1000
  config.log_every = 200
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.progress_bar = False
  return config


def get_sweep():
  """Field -> values; every combination is one run."""
  return {
      "server_optimizer.learning_rate": [0.03, 0.1, 0.3],
      "client_optimizer.learning_rate": [0.03, 0.1, 0.3],
      "seed": [0, 1, 2],
  }
