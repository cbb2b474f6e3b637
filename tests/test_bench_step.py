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


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_hand_counted_flops_match_xla_cost_analysis_on_cpu(model):
  """The benchmark's GFLOP/s use a hand count (XLA's GPU cost analysis misses library
  calls); on the CPU, where XLA counts every dot and convolution, the two must agree.
  At the benchmark's batch of 32 the elementwise work (activations, the optimizer's
  per-parameter updates and norms), which the hand count leaves out, is a few percent."""
  num_clients, batch = 2, 32
  config = bench_step.make_config(model, num_clients, batch)
  federation = bench_step.random_federation(num_clients, 20)
  algorithm = bench_step.algorithms.build_algorithm(config, federation)
  train_data, _ = bench_step.data.to_device(federation)
  state = bench_step.jax.eval_shape(algorithm.init_state)
  cost = bench_step.jax.jit(algorithm.step).lower(state, train_data).compile().cost_analysis()
  xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
  counted = bench_step.model_flops_per_example(config.model) * num_clients * batch
  # The MLP: 879,200 FLOPs per example (forward 397,600, weight gradients 397,600, input
  # gradients of the two layers after the first 84,000); elementwise work is the rest.
  assert counted == (879_200 if model == "mlp" else 72_384_512) * num_clients * batch
  assert counted <= xla <= 1.06 * counted
