r"""MTSL on Fashion-MNIST: 10 clients with 2 classes each (shards), CNN cut U-shaped.

Command:
  python launch/train.py --config configs/fashion_mnist.py --workdir workdirs/fmnist \
      --config.data.tfds_data_dir=../shared/tfds

Expected (2-core CPU, ~6 min): mean per-task test accuracy about 0.95: two classes per
task make each task easy; the shared server block must still serve all ten classes.
"""

from mtsl_jax import config_base


def get_config():
  """Fashion-MNIST experiment."""
  config = config_base.base_config()
  config.data.source = "tfds"
  config.data.name = "fashion_mnist"
  config.data.partition = "shards"
  config.data.classes_per_client = 2
  config.model.name = "cnn"
  config.split.orientation = "u_shaped"
  config.split.client_bottom_blocks = 1
  config.split.client_top_blocks = 1
  config.server_optimizer.learning_rate = 0.05
  config.client_optimizer.learning_rate = 0.05
  config.num_steps = 600
  config.log_every = 50
  config.eval_every = 200
  config.checkpoint_every = 200
  return config
