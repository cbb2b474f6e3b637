"""The communication ledger against bytes counted by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import config_base, ledger, optimizers, split, split_model

M, B, D, H = 3, 5, 12, 8  # clients, batch, input features, hidden width
F32, I32 = 4, 4

# Per client per step, for an MLP D -> H -> H -> C cut at one block on each client side.
HAND_COUNTS = {
    # up: smashed [B, H] f32 + labels [B] int32; down: cut gradient [B, H] f32.
    "bottom": (B * H * F32 + B * I32, B * H * F32),
    # up: raw inputs [B, D] f32 + cut gradient [B, H]; down: server output [B, H].
    "top": (B * D * F32 + B * H * F32, B * H * F32),
    # up: smashed [B, H] + cut gradient [B, H]; down: server output [B, H] + cut gradient [B, H].
    "u_shaped": (2 * B * H * F32, 2 * B * H * F32),
}
CUTS = {"bottom": (1, 0), "top": (0, 1), "u_shaped": (1, 1)}


@pytest.mark.parametrize("orientation", list(HAND_COUNTS))
def test_bytes_per_step_equal_a_hand_count(orientation):
  c = config_base.base_config()
  c.model.hidden_sizes = (H, H)
  c.split.orientation = orientation
  c.split.client_bottom_blocks, c.split.client_top_blocks = CUTS[orientation]
  model = split_model.make_split_model(c.model, c.split, 10)
  tx = optimizers.make_optimizer(c.server_optimizer, 10)
  ctx = split.StepContext(model, tx, tx, jnp.full((M,), 10), jnp.full((M,), 1 / M),
                          jnp.ones((M,)), B)
  state = jax.eval_shape(lambda: split.init_state(ctx, 0, (D,)))
  traffic = ledger.split_step_traffic(
      ctx, state, jax.ShapeDtypeStruct((M, B, D), jnp.float32),
      jax.ShapeDtypeStruct((M, B), jnp.int32))
  up, down = HAND_COUNTS[orientation]
  np.testing.assert_array_equal(traffic.uplink_M, [up] * M)
  np.testing.assert_array_equal(traffic.downlink_M, [down] * M)
  cumulative = traffic.cumulative(7)
  assert cumulative["comm/total_bytes"] == 7 * M * (up + down)
  assert cumulative["comm/max_client_bytes"] == 7 * (up + down)


def test_bfloat16_messages_count_two_bytes():
  messages = {"up/smashed": jax.ShapeDtypeStruct((2, 4, 3), jnp.bfloat16),
              "down/cut_gradients": jax.ShapeDtypeStruct((2, 4, 3), jnp.float32)}
  traffic = ledger.traffic_from_messages(messages)
  np.testing.assert_array_equal(traffic.uplink_M, [24, 24])
  np.testing.assert_array_equal(traffic.downlink_M, [48, 48])


def test_message_names_must_say_their_direction():
  with pytest.raises(ValueError, match="up/"):
    ledger.traffic_from_messages({"sideways/x": jax.ShapeDtypeStruct((1, 2), jnp.float32)})
