"""Time under a link model against hand-computed cases."""

import pytest

from mtsl_jax.comparison import link_model

SLOW = link_model.Link("1 Mbit/s, 50 ms", 1e6, 0.05)


def test_messages_in_one_direction_form_one_exchange():
  # bottom orientation: smashed data and labels up together, cut gradients down.
  assert link_model.exchanges([("up", 4000), ("up", 128), ("down", 4000)]) == [4128, 4000]
  # u_shaped: four turns of direction, four exchanges.
  assert len(link_model.exchanges([("up", 1), ("down", 1), ("up", 1), ("down", 1)])) == 4
  with pytest.raises(ValueError, match="'up' | 'down'"):
    link_model.exchanges([("sideways", 1)])


def test_a_split_step_and_a_fedavg_round_by_hand():
  # u_shaped step: 4 exchanges of 1000 bytes at 1 Mbit/s, 50 ms RTT:
  # each 0.025 s latency + 8000 bits / 1e6 = 0.008 s; plus 0.01 s compute.
  split = link_model.exchanges([("up", 1000), ("down", 1000), ("up", 1000), ("down", 1000)])
  assert link_model.step_seconds(split, 0.01, SLOW) == pytest.approx(0.01 + 4 * 0.033)
  # FedAvg round of a 2.3 MB model: down and up, 0.025 + 18.4 s each, plus 0.5 s compute.
  fedavg = link_model.exchanges([("down", 2.3e6), ("up", 2.3e6)])
  assert link_model.step_seconds(fedavg, 0.5, SLOW) == pytest.approx(0.5 + 2 * 18.425)
  # 300 rounds to the target at 100 Mbit/s: 300 * (0.5 + 2 * (0.025 + 0.184)).
  fast = link_model.LINKS[2]
  assert link_model.time_to_target(300, fedavg, 0.5, fast) == pytest.approx(
      300 * (0.5 + 2 * 0.209))
  assert link_model.time_to_target(float("inf"), fedavg, 0.5, fast) == float("inf")
