r"""MTSL on CIFAR-10: 10 clients with Dirichlet(0.3) label skew, small ResNet cut U-shaped.

Clients hold the stem and the head; the server holds the three residual stages. Meant for
a GPU/TPU (on a 2-core CPU, 20 steps for 10 clients took 47 s including data loading and
compilation).
CIFAR-10 must be prepared in the TFDS data_dir first (see README, "Real datasets").

Command:
  python launch/train.py --config configs/cifar10.py --workdir workdirs/cifar10 \
      --config.data.tfds_data_dir=/path/to/tfds

Expected: not measured yet: no GPU was available and these machines hold only a
4000-image CIFAR-10 subset. A 20-step smoke run on that subset (source 'npz',
../shared/datasets/cifar10_partial.npz) trains and evaluates.
"""

from mtsl_jax import config_base


def get_config():
  """CIFAR-10 experiment."""
  config = config_base.base_config()
  config.data.source = "tfds"
  config.data.name = "cifar10"
  config.data.partition = "dirichlet"
  config.data.dirichlet_alpha = 0.3
  config.model.name = "resnet"
  config.split.orientation = "u_shaped"
  config.split.client_bottom_blocks = 1
  config.split.client_top_blocks = 1
  config.server_optimizer = config_base.optimizer_config("momentum", 0.05)
  config.client_optimizer = config_base.optimizer_config("momentum", 0.05)
  config.server_optimizer.schedule = "cosine"
  config.client_optimizer.schedule = "cosine"
  config.batch_size = 32
  config.num_steps = 20000
  config.log_every = 200
  config.eval_every = 2000
  config.checkpoint_every = 2000
  return config
