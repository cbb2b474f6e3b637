"""Local epochs packed onto lanes (mtsl_jax/algorithms/epoch_lanes.py).

The schedule is checked on a hand-packed case, and a FedAvg round on lanes against the
same round in lock-step (every client vmapped over the largest client's steps, the extra
ones masked), which `tests/test_local_epochs.py` checks against a per-client loop.
"""

import jax
import numpy as np
import pytest

from mtsl_jax import algorithms, data
from mtsl_jax.algorithms import epoch_lanes

from tests import test_local_epochs as epochs_tests


def test_longest_client_first_onto_the_least_loaded_lane():
  # Steps 4, 6, 16 (26 in all): 2 lanes could fit them in 16 steps: lane 0 takes client 2
  # (16 steps), lane 1 client 1 (6) then client 0 (4) and idles for the last 6 steps.
  # 2 x 16 = 32 client steps against the lock-step round's 3 x 16 = 48.
  schedule = epoch_lanes.plan_lanes([4, 6, 16])
  assert (schedule.num_lanes, schedule.num_steps) == (2, 16)
  np.testing.assert_array_equal(schedule.client[:, 0], np.full(16, 2))
  np.testing.assert_array_equal(schedule.local_step[:, 0], np.arange(16))
  np.testing.assert_array_equal(schedule.client[:10, 1], [1] * 6 + [0] * 4)
  np.testing.assert_array_equal(schedule.local_step[:10, 1], list(range(6)) + list(range(4)))
  np.testing.assert_array_equal(schedule.active[:, 1], np.arange(16) < 10)
  assert schedule.active[:, 0].all()
  assert sorted(zip(*np.nonzero(schedule.first))) == [(0, 0), (0, 1), (6, 1)]
  assert sorted(zip(*np.nonzero(schedule.last))) == [(5, 1), (9, 1), (15, 0)]


def test_lanes_only_when_they_save_work():
  assert epoch_lanes.plan_lanes([5, 5, 5]) is None
  # 10, 9, 9: two lanes would need 19 steps (38 client steps against 30): not worth it.
  assert epoch_lanes.plan_lanes([10, 9, 9]) is None
  # Steps 7, 5, 5, 3: 3 lanes (7 | 5 + 3 | 5) take 8 steps, 24 client steps, 4 lanes 7
  # steps, 28 = the lock-step round's; 24 <= 0.9 x 28.
  schedule = epoch_lanes.plan_lanes([7, 5, 5, 3])
  assert (schedule.num_lanes, schedule.num_steps) == (3, 8)
  assert epoch_lanes.plan_lanes([7, 5, 5, 3], max_fraction=0.85) is None


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_a_fedavg_round_on_lanes_is_the_lock_step_round(monkeypatch, fraction):
  """Four clients of 5, 12, 30 and 3 examples, B = 4, E = 2 (steps 4, 6, 16, 2), momentum
  on both sides, three rounds: same global model and same per-task metrics on lanes and in
  lock-step, with every client or a sampled half."""
  sizes = (5, 12, 30, 3)
  federation = epochs_tests.make_federation(sizes)
  config = epochs_tests.epochs_config("fedavg", len(sizes), client_fraction=fraction)
  assert epoch_lanes.plan_lanes([4, 6, 16, 2]) is not None
  results = []
  for use_lanes in (True, False):
    if not use_lanes:
      monkeypatch.setattr(epoch_lanes, "plan_lanes", lambda *a, **k: None)
    algorithm = algorithms.build_algorithm(config, federation)
    train_data, _ = data.to_device(federation)
    step, state = jax.jit(algorithm.step), jax.jit(algorithm.init_state)()
    history = []
    for _ in range(3):
      state, metrics = step(state, train_data)
      history.append({k: np.asarray(metrics[k]) for k in ("task_loss", "task_accuracy",
                                                           "loss")})
    results.append((state.server.params, history))
  (lanes_params, lanes_history), (lock_params, lock_history) = results
  epochs_tests.tree_assert_close(lanes_params, lock_params, "global model")
  for a, b in zip(lanes_history, lock_history):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=epochs_tests.RTOL, atol=epochs_tests.ATOL,
                                 err_msg=key)
