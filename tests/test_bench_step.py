"""The benchmark's per-client loops compute the library's MTSL step (benchmarks/bench_step.py).

The speed ratios in benchmarks/RESULTS.md compare like with like only if the jit-per-client
JAX simulator and the PyTorch loop take the same step as the library's vmapped one: same
initial parameters and minibatches in, same losses and updated parameters out.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_step  # noqa: E402  pylint: disable=wrong-import-position


def test_jax_client_loop_takes_the_library_step():
  report = bench_step.check(num_clients=2, batch=4, with_torch=False)
  assert set(report) == {"mlp", "cnn"}
  assert all(diffs["jax_loop"] <= 1e-4 for diffs in report.values())


def test_torch_loop_takes_the_library_step():
  pytest.importorskip("torch")
  report = bench_step.check(num_clients=2, batch=4)
  assert all(diffs["torch_loop"] <= 1e-4 for diffs in report.values())
