r"""MTSL on the embedded Synthetic(1, 1) data: the offline default.

10 clients of the FedProx Synthetic(α=1, β=1) data (each its own model and input
distribution), an MLP 60-64-64-10 cut U-shaped: every client holds its input block and its
head, the server holds the shared middle block. Plain SGD on both sides.

Command:
  python launch/train.py --config configs/default.py --workdir workdirs/default

Expected (2-core CPU, about 10 s in total): final mean per-task test accuracy 0.896,
weighted 0.881, worst task 0.600 (measured, seed 0; tests/test_train.py checks >= 0.85).
"""

from mtsl_jax import config_base


def get_config():
  """The default experiment."""
  config = config_base.base_config()
  config.num_steps = 2000
  config.log_every = 200
  config.eval_every = 500
  config.checkpoint_every = 1000
  return config
