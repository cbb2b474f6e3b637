r"""SplitFed v1 on Synthetic(1, 1), with MTSL's default U-shaped cut.

Clients hold the input block and the head, the server the middle block, exactly as
configs/default.py; but the client-side parts are averaged every round (5 split steps) and
the server keeps one server-side copy per client, averaged every round. SGD lr 0.1 on both
sides, batch 32, 400 rounds (2000 split steps per client).

Command:
  python launch/train.py --config configs/splitfed_v1.py --workdir workdirs/splitfed_v1
  (`--config configs/default.py --config.algorithm=splitfed_v1` also runs, with the default's
  step count, fl fields and learning rates instead of the ones below)

Measured (2-core CPU shared with other jobs, seed 0, about 32 s in total): final mean
per-task test accuracy 0.885, worst task 0.500 (MTSL's default: 0.896 / 0.600); data-size
averages (fl.aggregation_weights), 0.891 / 0.600 with uniform ones.
"""

from mtsl_jax import config_base


def get_config():
  """The splitfed_v1 baseline on the default data and model."""
  config = config_base.base_config()
  config.algorithm = "splitfed_v1"
  config.num_steps = 400             # rounds; x local_steps = 2000 steps per client, as MTSL
  config.log_every = 40
  config.eval_every = 100
  config.checkpoint_every = 200
  config.fl.local_steps = 5
  config.server_optimizer.learning_rate = 0.1
  config.client_optimizer.learning_rate = 0.1
  return config
