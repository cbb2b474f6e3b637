r"""Tiny MTSL config for tests: 4 Synthetic clients, a small MLP, 40 steps, a second or two.

Command:
  python launch/train.py --config configs/test.py --workdir /tmp/mtsl_test
"""

from mtsl_jax import config_base


def get_config():
  """Tiny test experiment."""
  config = config_base.base_config()
  config.data.num_clients = 4
  config.data.synthetic.max_examples = 200
  config.model.hidden_sizes = (16, 16)
  config.batch_size = 8
  config.num_steps = 40
  config.log_every = 10
  config.eval_every = 20
  config.checkpoint_every = 20
  config.eval_batch_size = 32
  config.progress_bar = False
  return config
