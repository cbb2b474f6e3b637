"""Each side's share of a cut's parameters and FLOPs, against hand counts."""

import numpy as np

from mtsl_jax import config_base, cut_costs


def _model(name, **fields):
  c = config_base.base_config().model
  c.name = name
  for k, v in fields.items():
    c[k] = v
  return c


def test_mlp_blocks_cost_their_matmuls_plus_bias_and_activation():
  costs = cut_costs.block_costs(_model("mlp", hidden_sizes=(200, 200)), (784,), 10)
  assert [c.params for c in costs] == [784 * 200 + 200, 200 * 200 + 200, 200 * 10 + 10]
  # 2 * in * out multiply-adds, one add per bias, one max per ReLU (none in the head).
  assert [c.flops for c in costs] == [2 * 784 * 200 + 400, 2 * 200 * 200 + 400,
                                      2 * 200 * 10 + 10]


def test_the_cuts_of_the_fedavg_cnn():
  costs = cut_costs.block_costs(_model("cnn", padding="valid"), (28, 28, 1), 10)
  assert sum(c.params for c in costs) == 582_026
  conv1 = 2 * 5 * 5 * 1 * 32 * 24 * 24  # the multiply-adds of the first convolution
  assert conv1 <= costs[0].flops < 1.1 * conv1
  # Server-heavy: the client holds the first convolution block only ('bottom').
  bottom = cut_costs.side_costs(costs, client_bottom_blocks=1, client_top_blocks=0)
  assert bottom.client_params == 832 and bottom.server_params == 582_026 - 832
  np.testing.assert_allclose(bottom.client_flop_share,
                             costs[0].flops / sum(c.flops for c in costs))
  assert bottom.client_param_share < 0.002 and 0.05 < bottom.client_flop_share < 0.15
  # u_shaped with the head added on the client.
  u = cut_costs.side_costs(costs, client_bottom_blocks=1, client_top_blocks=1)
  assert u.client_params == 832 + 5130
  assert u.describe().startswith("client 1.0% of parameters")
