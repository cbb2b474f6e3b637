"""The PFLlib-setting benchmark computes what it times (benchmarks/bench_rounds.py, roofline.py).

Its speed ratios compare like with like only if the PyTorch loops take the library's
round and steps: same initial parameters and examples in, same parameters and losses
out (the torch halves skip without torch). Its waste factor and the roofline's byte
count are checked on hand-computed cases.
"""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_rounds  # noqa: E402  pylint: disable=wrong-import-position
import roofline  # noqa: E402  pylint: disable=wrong-import-position

# Three clients whose local epoch at batch 10 takes 1, 3 and 4 steps, each ending on a
# partial batch.
COUNTS, TEST_COUNTS = (7, 23, 40), (3, 8, 13)


@pytest.fixture(scope="module")
def federation():
  return bench_rounds.random_federation(COUNTS, TEST_COUNTS)


def test_round_and_evaluation_match_torch(federation):
  pytest.importorskip("torch")
  report = bench_rounds.check_round(federation, batch=10)
  assert report["pfllib_round"]["params"] <= 1e-6
  assert report["pfllib_round"]["losses"] <= 1e-5
  # The differences are far below the round's own change of the parameters.
  assert report["pfllib_round"]["update"] >= 1e-4
  assert report["pfllib_eval"]["correct"] == 0
  assert report["pfllib_eval"]["loss_sum"] <= 1e-4


@pytest.mark.parametrize("algorithm", bench_rounds.STEP_ALGORITHMS)
def test_steps_rows_match_torch(federation, algorithm):
  pytest.importorskip("torch")
  report = bench_rounds.check_steps(federation, algorithm, batch=10)
  assert report["params"] <= 1e-4 and report["losses"] <= 1e-4
  assert report["update"] >= 1e-4


def test_waste_factor_on_hand_example():
  # k = ceil(n / 10) = 1, 3, 4: the vmapped round computes 3 x 4 = 12 client steps for 8.
  assert bench_rounds.waste_factor(COUNTS, 10) == pytest.approx(12 / 8)
  assert bench_rounds.waste_factor((20, 20), 10) == 1.0
  assert bench_rounds.waste_factor((5, 25), 10, epochs=2) == pytest.approx(2 * 6 / 8)


def test_pfllib_counts_are_deterministic_and_split_three_to_one():
  train, test = bench_rounds.pfllib_counts(examples=4000, num_clients=5, seed=3)
  again = bench_rounds.pfllib_counts(examples=4000, num_clients=5, seed=3)
  assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
  sizes = train + test
  assert sizes.sum() == 4000 and sizes.min() >= bench_rounds.MIN_EXAMPLES
  assert np.array_equal(train, np.floor(0.75 * sizes))


def test_roofline_bytes_on_hand_case():
  # MLP 3 -> 2 -> 2 -> 2, M = 2, B = 1. Layers' parameters 8, 6, 6: P_c = 14 (bottom and
  # head), P_s = 6; head kernel 4, server kernel 4; activations 2 + 2 + 2 = 6 per example.
  terms = roofline.mtsl_mlp_step_terms(2, 1, (3, 2, 2, 2))
  floats = {"client params, forward": 2 * 14, "client kernels, backward": 2 * 4,
            "client gradients": 2 * 2 * 14, "client update": 2 * 2 * 14,
            "server params, forward": 6, "server kernels, backward": 4,
            "server gradient": 2 * 6, "server update": 2 * 6,
            "minibatch gather": 2 * 2 * 3, "batch reads": 2 * 2 * 3, "labels": 3 * 2,
            "activations": 3 * 2 * 6, "activation gradients": 2 * 2 * 6}
  assert terms == {k: 4 * v for k, v in floats.items()}
  assert roofline.mtsl_mlp_step_bytes(2, 1, (3, 2, 2, 2)) == 4 * 272


def test_roofline_is_the_lower_ceiling():
  # 100 FLOPs over 50 bytes: intensity 2, so 10 B/s gives 20 FLOP/s under a 30 FLOP/s peak.
  assert roofline.roofline_flops(30.0, 10.0, 100.0, 50.0) == 20.0
  assert roofline.roofline_flops(15.0, 10.0, 100.0, 50.0) == 15.0


def test_stream_bandwidth_runs():
  stream = roofline.stream_bandwidth(megabytes=1, repeats=1)
  assert stream["bytes_per_array"] == 2 ** 20
  assert stream["copy"] > 0 and stream["triad"] > 0
