r"""MTSL on Fashion-MNIST: 10 clients with 2 classes each (shards), CNN cut U-shaped.

Command:
  python launch/train.py --config configs/fashion_mnist.py --workdir workdirs/fmnist \
      --config.data.tfds_data_dir=../shared/tfds

Expected: mean per-task test accuracy 0.994, worst task 0.976 (measured, seed 0). Two
classes per task make each task easy; the shared server block still serves all ten
classes. Same network and steps as configs/mnist.py (7 min on a 2-core CPU); this run took
24 min on a CPU shared with other jobs.
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
