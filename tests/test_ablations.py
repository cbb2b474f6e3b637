"""Ablations of MTSL's shared part: a frozen server part and one common client init."""

import jax
import numpy as np
import pytest

from mtsl_jax import train
from tests.test_replicas import _tiny  # the same tiny MTSL run


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _trained(config, tmp_path):
  _, algorithm = train.prepare_run(config)
  result = train.train_and_evaluate(config, tmp_path, verbose=False)
  return algorithm.init_state(), result.state


@pytest.mark.parametrize("orientation", ["u_shaped", "bottom"])
def test_a_frozen_server_part_keeps_its_initialization(tmp_path, orientation):
  config = _tiny(**{"split.freeze_server": True, "split.orientation": orientation,
                    "split.client_top_blocks": int(orientation == "u_shaped")})
  start, end = _trained(config, tmp_path)
  for a, b in zip(_leaves(start.server.params), _leaves(end.server.params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in
             zip(_leaves(start.clients.params), _leaves(end.clients.params)))
  # Without the ablation the same run moves the server part.
  start, end = _trained(_tiny(**{"split.orientation": orientation,
                                 "split.client_top_blocks": int(orientation == "u_shaped")}),
                        tmp_path / "free")
  assert any(not np.array_equal(a, b) for a, b in
             zip(_leaves(start.server.params), _leaves(end.server.params)))


def test_common_client_init_starts_every_client_from_client_0s_parameters(tmp_path):
  common_start, common_end = _trained(_tiny(**{"split.client_init": "common"}), tmp_path)
  own_start, _ = _trained(_tiny(), tmp_path / "own")
  own = _leaves(own_start.clients.params)
  for common, mine in zip(_leaves(common_start.clients.params), own):
    np.testing.assert_array_equal(common, np.broadcast_to(mine[:1], mine.shape))
  assert any(not np.array_equal(o[0], o[1]) for o in own)  # independent inits differ
  # The server part and the per-step keys are those of the independent run.
  for a, b in zip(_leaves(common_start.server.params), _leaves(own_start.server.params)):
    np.testing.assert_array_equal(a, b)
  # Clients train on their own data, so they part ways after the first step.
  assert any(not np.array_equal(leaf[0], leaf[1])
             for leaf in _leaves(common_end.clients.params))


def test_data_size_lr_scaling_multiplies_each_client_rate_by_its_share_of_the_mean():
  from mtsl_jax.algorithms import mtsl
  config = _tiny(**{"split.client_lr_scaling": "data_size",
                    "split.client_lr_multipliers": (2.0, 1.0, 1.0)})
  federation, _ = train.prepare_run(config)
  counts = np.asarray(federation.train_counts, np.float64)
  assert counts.std() > 0  # the embedded clients differ in size, so the test can fail
  got = np.asarray(mtsl.make_step_context(config, federation).lr_multipliers_M)
  expected = counts / counts.mean() * np.array([2.0, 1, 1])
  np.testing.assert_allclose(got, expected, rtol=1e-6)
