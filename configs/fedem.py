r"""FedEM on Synthetic(1, 1): 3 shared MLP 60-64-64-10 components, per-client mixtures.

400 rounds; each client per round: E-step on its 5 minibatches, mixture weights updated,
5 responsibility-weighted SGD steps (lr 0.1, batch 32) on every component; components
averaged with plain FedAvg (server SGD lr 1).

Command:
  python launch/train.py --config configs/fedem.py --workdir workdirs/fedem
  (`--config configs/default.py --config.algorithm=fedem` also runs, with the default's
  step count, fl fields and learning rates instead of the ones below)

Measured (2-core CPU shared with other jobs, seed 0, about 28 s in total): final mean
per-task test accuracy 0.882, worst task 0.500 (MTSL's default: 0.896 / 0.600); data-size
averages (fl.aggregation_weights), 0.882 / 0.600 with uniform ones.
"""

from mtsl_jax import config_base


def get_config():
  """The fedem baseline on the default data and model."""
  config = config_base.base_config()
  config.algorithm = "fedem"
  config.num_steps = 400             # rounds; x local_steps = 2000 steps per client, as MTSL
  config.log_every = 40
  config.eval_every = 100
  config.checkpoint_every = 200
  config.fl.local_steps = 5
  config.fl.num_components = 3
  config.client_optimizer.learning_rate = 0.1
  config.server_optimizer.learning_rate = 1.0
  return config
