r"""FedAvg on the embedded Synthetic(1, 1) data: the federated baseline of configs/default.py.

Same 10 clients, the full MLP 60-64-64-10 on every client. 400 rounds of 5 local SGD steps
(client lr 0.1, batch 32) per client, so each client takes 2000 steps like MTSL's default;
plain FedAvg (server SGD, lr 1). Every task is evaluated with the one global model.

Command:
  python launch/train.py --config configs/fedavg.py --workdir workdirs/fedavg
  (`--config configs/default.py --config.algorithm=fedavg` also runs, with the default's
  step count, fl fields and learning rates instead of the ones below)

Measured (2-core CPU shared with other jobs, seed 0, about 24 s in total): final mean
per-task test accuracy 0.869, worst task 0.500 (MTSL's default: 0.896 / 0.600); data-size
averages (fl.aggregation_weights), 0.874 / 0.562 with uniform ones.
"""

from mtsl_jax import config_base


def get_config():
  """The fedavg baseline on the default data and model."""
  config = config_base.base_config()
  config.algorithm = "fedavg"
  config.num_steps = 400             # rounds; x local_steps = 2000 steps per client, as MTSL
  config.log_every = 40
  config.eval_every = 100
  config.checkpoint_every = 200
  config.fl.local_steps = 5
  config.client_optimizer.learning_rate = 0.1
  config.server_optimizer.learning_rate = 1.0  # server SGD at lr 1: plain FedAvg
  return config
