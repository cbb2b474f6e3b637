"""Statistics that can carry a verdict: t-intervals, paired tests over seeds, a plateau rule.

Used by the comparison (v2) and the "when does the server help" study. Conventions:

  * spread is the sample standard deviation (ddof = 1), intervals are Student-t intervals
    (95% unless stated), never the population std of a handful of seeds;
  * two methods are compared on the SAME seeds (same data partition and minibatch keys per
    seed), so their difference is tested per seed (`paired`): the interval and p-value of
    the mean per-seed difference, which removes the between-seed variance both share;
  * a claim "A beats B" gets one of three verdicts (`verdict`): 'holds' (the paired
    interval lies above zero), 'fails' (it lies below zero: significantly the other way),
    or 'not significant' (it contains zero);
  * a run has reached its plateau (`plateau_step`) when its evaluated accuracy gains less
    than `min_gain` over the following `window` evaluations; a budget "trains to a
    plateau" when the plateau is reached before the budget ends (`at_plateau`). A whole
    curve has plateaued (`plateaued`) when its last fraction of evaluations gains less
    than `min_gain` over the best before them.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats

VERDICTS = ("holds", "not significant", "fails")


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean with its spread and t-interval.

  Attributes:
    mean: the sample mean.
    std: the sample standard deviation (ddof = 1; NaN for one value).
    n: the number of values.
    low, high: the `confidence` Student-t interval of the mean (NaN bounds for n < 2).
    confidence: e.g. 0.95.
  """
  mean: float
  std: float
  n: int
  low: float
  high: float
  confidence: float

  @property
  def half_width(self) -> float:
    return (self.high - self.low) / 2

  def __str__(self) -> str:
    return f"{self.mean:.4f} ± {self.half_width:.4f} (n={self.n})"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
  """The mean of `values` with its sample std and Student-t interval.

  Args:
    values: finite numbers (e.g. one per seed).
    confidence: the interval's coverage, in (0, 1).

  Returns:
    An Interval.

  Raises:
    ValueError: no values, a non-finite value, or a confidence outside (0, 1).
  """
  x = np.asarray(values, np.float64)
  if x.size == 0 or not np.all(np.isfinite(x)):
    raise ValueError(f"t_interval needs at least one finite value, got {x.tolist()}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  n, mean = x.size, float(x.mean())
  if n < 2:
    return Interval(mean, float("nan"), n, float("nan"), float("nan"), confidence)
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / np.sqrt(n)
  return Interval(mean, std, n, mean - half, mean + half, confidence)


@dataclasses.dataclass(frozen=True)
class PairedTest:
  """The per-seed difference a - b of two methods run on the same seeds.

  Attributes:
    difference: t_interval of the per-seed differences.
    t: the paired t statistic (NaN when every difference is equal, or n < 2).
    p: its two-sided p-value (NaN likewise; 0 when all differences are equal and nonzero).
  """
  difference: Interval
  t: float
  p: float


def paired(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedTest:
  """Paired t-test of a - b over matched seeds.

  Args:
    a, b: one value per seed each, in the same seed order.
    confidence: the interval's coverage.

  Returns:
    A PairedTest.

  Raises:
    ValueError: different lengths, or what `t_interval` refuses.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired values need the same seeds: {a.size} and {b.size} values")
  d = a - b
  interval = t_interval(d, confidence)
  if d.size < 2:
    return PairedTest(interval, float("nan"), float("nan"))
  if interval.std == 0:  # no spread: the difference is exact
    exact = float(d[0])
    return PairedTest(dataclasses.replace(interval, low=exact, high=exact),
                      float("nan"), 0.0 if exact != 0 else float("nan"))
  result = stats.ttest_rel(a, b)
  return PairedTest(interval, float(result.statistic), float(result.pvalue))


def verdict(test: PairedTest) -> str:
  """'holds' if the claim a > b is significant, 'fails' if a < b is, else 'not significant'.

  Significance is the test's interval excluding zero (at its confidence), which for a
  two-sided paired t-test is the same as p < 1 - confidence.
  """
  d = test.difference
  if d.n < 2:
    return "not significant"
  if d.low > 0:
    return "holds"
  if d.high < 0:
    return "fails"
  return "not significant"


def plateau_step(steps: Sequence[int], accuracies: Sequence[float], window: int,
                 min_gain: float) -> int | None:
  """The first evaluated step after which the next `window` evaluations gain < `min_gain`.

  Step s_i is a plateau when the best accuracy over the next `window` evaluations exceeds
  the best so far (up to and including s_i) by less than `min_gain`.

  Args:
    steps: evaluation steps, increasing.
    accuracies: the accuracy at each.
    window: evaluations to look ahead (>= 1).
    min_gain: the gain that still counts as progress (e.g. 0.005).

  Returns:
    The plateau step, or None when the curve is still rising within its last `window`
    evaluations (it did not reach a plateau in its budget).
  """
  acc = np.asarray(accuracies, np.float64)
  if len(steps) != acc.size or window < 1:
    raise ValueError("one accuracy per step and window >= 1 are needed")
  best = np.maximum.accumulate(acc)
  for i in range(acc.size - window):
    if acc[i + 1:i + 1 + window].max() - best[i] < min_gain:
      return int(steps[i])
  return None


def at_plateau(steps: Sequence[int], accuracies: Sequence[float], window: int,
               min_gain: float) -> bool:
  """Whether the curve reached its plateau within its budget (see `plateau_step`)."""
  return plateau_step(steps, accuracies, window, min_gain) is not None


def plateaued(accuracies: Sequence[float], fraction: float = 0.2,
              min_gain: float = 0.003) -> bool:
  """Whether a run's curve has reached its plateau by the end of its budget.

  With n evaluations a_1..a_n, the tail is the last k = ceil(fraction * n) of them, k at
  least 1 and at most n - 1 (so the head a_1..a_{n-k} is never empty). The run has
  plateaued when max(a_{n-k+1}, ..., a_n) - max(a_1, ..., a_{n-k}) < min_gain: its last
  `fraction` of the budget improved on the best accuracy before it by less than
  `min_gain` (a tail that ends lower than the head also counts as plateaued). E.g. 50
  evaluations, fraction 0.2: the last 10 against the first 40.

  Args:
    accuracies: the evaluated accuracy of each evaluation, in order (at least 2).
    fraction: the tail's share of the evaluations, in (0, 1).
    min_gain: the gain of the tail that still counts as progress.

  Returns:
    True when the tail's gain is below `min_gain`.

  Raises:
    ValueError: fewer than 2 evaluations, a non-finite accuracy, or a fraction outside
      (0, 1).
  """
  acc = np.asarray(accuracies, np.float64)
  if acc.ndim != 1 or acc.size < 2:
    raise ValueError(f"plateaued needs at least 2 evaluations, got {acc.size}")
  if not np.all(np.isfinite(acc)):
    raise ValueError(f"plateaued needs finite accuracies, got {acc.tolist()}")
  if not 0 < fraction < 1:
    raise ValueError(f"fraction must be in (0, 1), got {fraction}")
  # The tolerance keeps products such as 0.1 * 30 = 3.0000000000000004 at 3, not 4.
  tail = min(acc.size - 1, max(1, math.ceil(fraction * acc.size - 1e-9)))
  return bool(acc[-tail:].max() - acc[:-tail].max() < min_gain)
