r"""FedAvg in PFLlib's MNIST setting, on a partition you provide.

PFLlib (Zhang et al.) trains its FedAvgCNN on MNIST with 20 clients, batch 10, one local
epoch per round, SGD with learning rate 0.005, every client joining every round, and
aggregation weighted by client data size. This config sets the same through mtsl_jax's
fields: the unpadded FedAvg CNN (conv5x5-32, pool, conv5x5-64, pool, dense 1024->512,
dense 10: 582,026 parameters) with PyTorch's default initialization, inputs scaled to
[-1, 1] as PFLlib's Normalize([0.5], [0.5]) does, and the clients' examples exactly as
your partition gives them (see README, "Your own federated data", for the layout).

Command (after writing the partition to client_<m>.npz files in DIR):
  python launch/train.py --config configs/pfllib_mnist.py --workdir workdirs/pfllib \
      --config.data.client_path=DIR

MTSL on the same partition and model (the client holds the first convolution block):
  python launch/train.py --config configs/pfllib_mnist.py --workdir workdirs/pfllib_mtsl \
      --config.data.client_path=DIR --config.algorithm=mtsl \
      --config.split.orientation=bottom --config.split.client_bottom_blocks=1 \
      --config.split.client_top_blocks=0
"""

from mtsl_jax import config_base


def get_config():
  """FedAvg with PFLlib's MNIST settings; set data.client_path to your partition."""
  config = config_base.base_config()
  config.algorithm = "fedavg"
  config.data.source = "client_dir"
  config.data.client_path = ""       # required: the directory of client_<m>.npz files
  config.data.num_clients = 20
  config.data.normalization = "scale_-1_1"
  config.model.name = "cnn"
  config.model.cnn_features = (32, 64)
  config.model.cnn_dense = 512
  config.model.padding = "valid"
  config.model.init = "torch"
  config.batch_size = 10
  config.fl.local_epochs = 1          # each client's steps: ceil(n_m / 10) per round
  config.fl.client_fraction = 1.0
  config.fl.aggregation_weights = "data_size"
  config.client_optimizer.name = "sgd"
  config.client_optimizer.learning_rate = 0.005
  config.server_optimizer.name = "sgd"
  config.server_optimizer.learning_rate = 1.0  # the plain average of the clients' models
  config.num_steps = 2000             # rounds (PFLlib's default -gr 2000)
  config.log_every = 20
  config.eval_every = 20
  config.checkpoint_every = 100
  return config
