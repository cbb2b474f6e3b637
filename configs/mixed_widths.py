r"""MTSL with clients of different widths on the embedded Synthetic(1, 1) data.

The default's 10 clients and data, with an MLP 60-64-64-64-10 cut U-shaped after its
second layer: each client holds two input layers and its head, the server the third
layer. The clients come in three groups of different capacity: clients 0-3 have a first
layer of 16 units (width multiplier 0.25), clients 4-6 of 32 (0.5), clients 7-9 of 64
(1.0). The layer at the cut keeps its 64 units, so the server part is the same for all.
Federated averaging cannot train such a federation (it averages client models, which
needs one shape); MTSL never averages client parameters. docs/algorithm.md, "Clients of
different widths".

Command:
  python launch/train.py --config configs/mixed_widths.py --workdir workdirs/mixed_widths

Expected (measured, seed 0; about 40 s in total on a busy 2-core CPU): final mean per-task
test accuracy 0.896, weighted 0.881, worst task 0.600. For comparison, the same run with
every client at full width (`--config.model.client_width_groups='()'`) gives 0.894 and with
every client at 16 units (`'((10, 0.25),)'`) 0.901: on these data a quarter of the width
costs the clients no accuracy.
"""

from mtsl_jax import config_base


def get_config():
  """Three groups of client widths, 2000 steps."""
  config = config_base.base_config()
  config.model.hidden_sizes = (64, 64, 64)
  config.split.client_bottom_blocks = 2
  config.model.client_width_groups = ((4, 0.25), (3, 0.5), (3, 1.0))
  config.num_steps = 2000
  config.log_every = 200
  config.eval_every = 500
  config.checkpoint_every = 1000
  return config
