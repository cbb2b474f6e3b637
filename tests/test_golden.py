"""Golden values and accuracy floors of every algorithm on the embedded Synthetic data.

`test_golden_values` reruns each tiny run of tests/golden_values.py (30 steps through
`train.train_and_evaluate`) and compares its final train loss, per-task test accuracies
and losses, and mean and weighted test accuracy with tests/golden/values.json
(rtol 1e-4, atol 1e-5). It never writes them: after an INTENDED change of results,
regenerate with `python -m tests.golden_values --write` and say so in the commit.

`test_accuracy_floor` runs the same configs longer (1500 gradient steps per client) and
asks for a pooled test accuracy well above what predicting each client's most frequent
training label gets (`test_floors_are_above_the_majority_class_baseline`). The floor runs
differ from the golden runs only in `num_steps` and the evaluation interval, so they reuse
the golden runs' compiled programs (under `pytest -n N --dist loadgroup` the module
stays on one worker for that, by its xdist_group).
Deselect the floors with `-k "not floor"` when iterating.
"""

import jax
import numpy as np
import pytest

from mtsl_jax import data
from tests import golden_values

pytestmark = pytest.mark.xdist_group("golden")

# Pooled ('test/accuracy_weighted') test accuracy after the floor run. Measured with
# `python -m tests.golden_values --floors` (seed 0, CPU), and again with both learning
# rates scaled by 1 ± 1e-6, 1 ± 1e-5 and 1 ± 1e-4, which stands in for summation-order
# differences (the federated runs with lr-1 server steps are chaotic over 300 rounds:
# these perturbations move FedRep by up to 0.06). Each floor is the lowest of those seven
# values minus 0.02, rounded down to 0.01. The majority-class baseline is 0.742.
# The mean per-task accuracy is not floored: two tasks have 10 and 18 test examples, so
# one example moves it by up to 0.025.
# FedAvg, FedRep and FedEM were measured again when their averages became data-size
# weighted (fl.aggregation_weights); SplitFed's floor runs keep uniform averages
# (golden_values.SPLITFED_FLOOR_WEIGHTS says why), so their floors are unchanged.
FLOORS = {
    "mtsl_fused": 0.77,   # measured 0.799; lowest perturbed 0.796
    "fedavg": 0.82,       # measured 0.850; lowest perturbed 0.844
    "fedrep": 0.76,       # measured 0.850; lowest perturbed 0.781
    "fedem": 0.83,        # measured 0.856; lowest perturbed 0.850
    "splitfed_v1": 0.82,  # measured 0.850; lowest perturbed 0.850 (uniform averages)
    "splitfed_v2": 0.81,  # measured 0.850; lowest perturbed 0.838 (uniform averages)
    "local": 0.84,        # measured 0.883; lowest perturbed 0.868
    "centralized": 0.84,  # measured 0.868; lowest perturbed 0.868
}
# mtsl_protocol computes MTSL's gradients message by message; its golden values already
# tie it to mtsl_fused, so its floor would repeat mtsl_fused's.


@pytest.fixture(scope="module")
def stored():
  if not golden_values.GOLDEN_PATH.exists():
    pytest.fail(f"{golden_values.GOLDEN_PATH} is missing; create it with "
                f"{golden_values.WRITE_COMMAND}")
  return golden_values.load()


def test_every_algorithm_has_golden_values(stored):
  assert sorted(stored) == sorted(golden_values.RUN_NAMES), (
      f"stored runs {sorted(stored)}; regenerate with {golden_values.WRITE_COMMAND}")


@pytest.mark.parametrize("run", golden_values.RUN_NAMES)
def test_golden_values(run, stored, tmp_path):
  if run not in stored:
    pytest.fail(f"no golden values for {run}; {golden_values.WRITE_COMMAND}")
  # Another backend sums differently and may use TF32 matmuls (GPU): the stored numbers
  # hold across CPUs, not across backends.
  if jax.default_backend() != golden_values.stored_backend():
    pytest.skip(f"golden values were computed on {golden_values.stored_backend()}, "
                f"this is {jax.default_backend()}")
  got = golden_values.measure(golden_values.golden_config(run), tmp_path / "run")
  diff = golden_values.differences(stored[run], got)
  assert not diff, (f"{run} moved from its golden values:\n  " + "\n  ".join(diff)
                    + f"\nIf the change is intended: {golden_values.WRITE_COMMAND}")


def test_floors_are_above_the_majority_class_baseline():
  """A floor must say more than 'predicts each client's most frequent label'."""
  config = golden_values.golden_config("fedavg")
  federation = data.build_federation(config.data, config.seed)
  correct = sum(int(np.sum(test_y == np.argmax(np.bincount(train_y))))
                for train_y, test_y in zip(federation.train_y, federation.test_y))
  majority = correct / int(federation.test_counts.sum())
  assert majority == pytest.approx(0.742, abs=5e-4)  # the value the comment above states
  assert min(FLOORS.values()) > majority + 0.015


@pytest.mark.parametrize("run", sorted(FLOORS))
def test_accuracy_floor(run, tmp_path):
  got = golden_values.measure(golden_values.floor_config(run), tmp_path / "run")
  assert got["test_accuracy_weighted"] >= FLOORS[run], (
      f"{run}: pooled test accuracy {got['test_accuracy_weighted']:.4f} below its floor "
      f"{FLOORS[run]} (per task {np.round(got['test_accuracy'], 3).tolist()})")
