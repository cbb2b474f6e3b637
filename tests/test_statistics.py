"""The comparison's statistics against hand-computed answers."""

import numpy as np
import pytest

from mtsl_jax.comparison import statistics


def test_t_interval_of_five_values():
  i = statistics.t_interval([1, 2, 3, 4, 5])
  # mean 3, sample std sqrt(2.5), t_{0.975, 4} = 2.7764451051977987 (tables).
  half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)
  assert (i.mean, i.n) == (3.0, 5)
  np.testing.assert_allclose(i.std, np.sqrt(2.5))
  np.testing.assert_allclose((i.low, i.high), (3 - half, 3 + half))
  assert str(i) == "3.0000 ± 1.9632 (n=5)"


def test_one_value_has_no_interval_and_bad_input_is_refused():
  i = statistics.t_interval([0.7])
  assert i.mean == 0.7 and np.isnan(i.std) and np.isnan(i.low)
  with pytest.raises(ValueError, match="finite"):
    statistics.t_interval([1.0, float("nan")])
  with pytest.raises(ValueError, match="confidence"):
    statistics.t_interval([1.0, 2.0], confidence=1.0)
  with pytest.raises(ValueError, match="same seeds"):
    statistics.paired([1, 2], [1, 2, 3])


def test_paired_test_and_its_three_verdicts():
  # Differences 1, 2, 3: t = 2 / (1 / sqrt(3)) = 3.4641, df 2, two-sided p = 0.07418.
  weak = statistics.paired([1, 2, 3], [0, 0, 0])
  np.testing.assert_allclose((weak.t, weak.p), (2 * np.sqrt(3), 0.0741799), rtol=1e-5)
  assert statistics.verdict(weak) == "not significant"
  a = [0.91, 0.90, 0.93, 0.92, 0.90]
  b = [0.88, 0.88, 0.90, 0.89, 0.88]  # a - b = 0.03, 0.02, 0.03, 0.03, 0.02
  assert statistics.verdict(statistics.paired(a, b)) == "holds"
  assert statistics.verdict(statistics.paired(b, a)) == "fails"
  # Pairing matters: the same values unpaired overlap, paired they do not.
  ia, ib = statistics.t_interval(a), statistics.t_interval(b)
  assert ia.low < ib.high
  # Equal differences: exact, significant unless zero.
  exact = statistics.paired([1.0, 2.0], [0.5, 1.5])
  assert exact.p == 0.0 and statistics.verdict(exact) == "holds"
  assert statistics.verdict(statistics.paired([1.0, 2.0], [1.0, 2.0])) == "not significant"


def test_plateau_rule():
  steps = list(range(100, 1100, 100))
  rising = [0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.862, 0.863, 0.863, 0.864]
  # From step 600 (0.86) the next 3 evaluations gain at most 0.003 < 0.005.
  assert statistics.plateau_step(steps, rising, window=3, min_gain=0.005) == 600
  still_rising = [0.5 + 0.04 * k for k in range(10)]
  assert statistics.plateau_step(steps, still_rising, window=3, min_gain=0.005) is None
  assert not statistics.at_plateau(steps, still_rising, window=3, min_gain=0.005)
  # A dip of two evaluations: a window of 2 stops there, a window of 3 sees past it.
  dip = [0.5, 0.7, 0.69, 0.69, 0.80, 0.81, 0.811, 0.811, 0.812, 0.812]
  assert statistics.plateau_step(steps, dip, window=2, min_gain=0.005) == 200
  assert statistics.plateau_step(steps, dip, window=3, min_gain=0.005) == 600


def test_a_curve_has_plateaued_when_its_last_fifth_gains_less_than_min_gain():
  # 10 evaluations: the tail is the last ceil(0.2 * 10) = 2, the head the first 8.
  head = [0.2, 0.5, 0.7, 0.8, 0.78, 0.79, 0.8, 0.8]
  assert statistics.plateaued(head + [0.802, 0.801])      # gain 0.002 < 0.003
  assert not statistics.plateaued(head + [0.79, 0.804])   # gain 0.004: still rising
  assert statistics.plateaued(head + [0.7, 0.75])         # a lower tail: no gain at all
  # The gain must be strictly below min_gain (exact binary fractions: no rounding).
  assert not statistics.plateaued([0.5, 0.625], fraction=0.2, min_gain=0.125)
  assert statistics.plateaued([0.5, 0.625], fraction=0.2, min_gain=0.25)


def test_the_plateau_tail_is_at_least_one_and_at_most_all_but_one_evaluation():
  # 7 evaluations, fraction 0.2: ceil(1.4) = 2 in the tail.
  assert not statistics.plateaued([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.5], min_gain=0.1)
  assert statistics.plateaued([0.1, 0.2, 0.3, 0.4, 0.9, 0.5, 0.5], min_gain=0.1)
  # 30 evaluations, fraction 0.1: 0.1 * 30 is 3.0000000000000004 in floats, the tail 3.
  # With the jump 4 evaluations from the end, a tail of 3 gains 0, a tail of 4 gains 0.9.
  curve = [0.0] * 26 + [0.9, 0.9, 0.9, 0.9]
  assert statistics.plateaued(curve, fraction=0.1, min_gain=0.01)
  assert not statistics.plateaued(curve, fraction=0.12, min_gain=0.01)  # ceil(3.6) = 4
  # 2 evaluations: the tail is the last one whatever the fraction.
  assert statistics.plateaued([0.6, 0.601], fraction=0.9)
  for bad in ([0.5], []):
    with pytest.raises(ValueError, match="at least 2"):
      statistics.plateaued(bad)
  with pytest.raises(ValueError, match="finite"):
    statistics.plateaued([0.5, float("nan")])
  with pytest.raises(ValueError, match="fraction"):
    statistics.plateaued([0.5, 0.6], fraction=1.0)
