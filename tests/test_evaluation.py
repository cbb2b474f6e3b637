"""Evaluation by groups of clients of similar test-set size (mtsl_jax/evaluation.py).

The layout is checked against hand-solved cases (which grouping computes the fewest rows,
how chunks are sized under the memory bound), and the grouped evaluation of every
algorithm against a reference that needs no layout: the algorithm's task models on every
client's whole padded test set, the padding masked, the accuracy and cross-entropy of
each client's real examples computed in numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtsl_jax import algorithms, config_base, data, evaluation

D, C = 4, 5


def test_best_groups_minimise_the_rows_computed():
  # Sorted counts 10, 9, 3, 1 (clients 1, 3, 0, 2): one group computes 4 x 10 = 40 rows;
  # of the two-group cuts {10, 9} {3, 1} computes 2 x 10 + 2 x 3 = 26, {10} {9, 3, 1} 37,
  # {10, 9, 3} {1} 31.
  layout = evaluation.plan_layout([3, 10, 1, 9], eval_batch_size=64, max_groups=2)
  assert [g.clients for g in layout.groups] == [(1, 3), (0, 2)]
  assert [g.length for g in layout.groups] == [10, 3]
  assert (layout.real_rows, layout.computed_rows) == (23, 26)
  # Three groups: {10, 9} {3} {1} = 24; {10} {9} {3, 1} = 25; {10} {9, 3} {1} = 29.
  three = evaluation.plan_layout([3, 10, 1, 9], eval_batch_size=64, max_groups=3)
  assert [g.clients for g in three.groups] == [(1, 3), (0,), (2,)]
  assert three.computed_rows == 24


def test_groups_only_when_they_save_enough():
  equal = evaluation.plan_layout([7, 7, 7], eval_batch_size=64)
  assert equal.groups == (evaluation.EvalGroup(None, 7, 7),)
  # 10, 9, 8, 7: the best two groups compute 20 + 16 = 36 of 40 rows, a 10% saving.
  close = evaluation.plan_layout([10, 9, 8, 7], eval_batch_size=64, max_groups=2)
  assert close.groups == (evaluation.EvalGroup(None, 10, 10),) and close.computed_rows == 40
  ungrouped = evaluation.plan_layout([2, 10, 1, 9], eval_batch_size=64, group=False)
  assert ungrouped.groups == (evaluation.EvalGroup(None, 10, 10),)


def test_clients_without_test_examples_are_left_out():
  layout = evaluation.plan_layout([0, 12, 0, 11], eval_batch_size=64)
  assert [g.clients for g in layout.groups] == [(1, 3)]
  assert layout.computed_rows == 24


def test_chunks_respect_the_memory_bound_and_even_out():
  # 2 clients x 100 bytes per example within 1,000 bytes: at most 5 examples per client
  # per chunk; 12 examples take 3 chunks, evened out to 4 each (no padding).
  layout = evaluation.plan_layout([12, 12], eval_batch_size=64, bytes_per_example=100,
                                  memory_bytes=1000)
  assert layout.groups == (evaluation.EvalGroup(None, 12, 4),)
  # eval_batch_size bounds it too: 13 examples in chunks of at most 5 -> 3 chunks of 5.
  capped = evaluation.plan_layout([13, 13], eval_batch_size=5)
  assert capped.groups == (evaluation.EvalGroup(None, 15, 5),)


def test_activation_bytes_count_the_forward_values_of_one_example():
  """The local MLP D-8-8-C, per example: each hidden layer's product, bias add and ReLU
  (3 x 8 values), the head's product and bias add (2 x C): 58 float32 values = 232 bytes.
  The clients' parameter gather and the bias reshapes are per client, not per example."""
  federation = _federation([3, 3], seed=0)
  algorithm = algorithms.build_algorithm(_config("local", 2), federation)
  got = evaluation.activation_bytes_per_example(
      algorithm.logits, jax.eval_shape(algorithm.init_state),
      jax.ShapeDtypeStruct((D,), np.float32))
  assert got == 4 * (2 * 3 * 8 + 2 * C) == 232


def _federation(test_counts, seed, shape=(D,)):
  rng = np.random.default_rng(seed)
  xs = tuple(rng.normal(size=(n, *shape)).astype(np.float32) for n in test_counts)
  ys = tuple(rng.integers(0, C, size=n).astype(np.int32) for n in test_counts)
  train_x = tuple(rng.normal(size=(4, *shape)).astype(np.float32) for _ in test_counts)
  train_y = tuple(rng.integers(0, C, size=4).astype(np.int32) for _ in test_counts)
  return data.Federation(train_x=train_x, train_y=train_y, test_x=xs, test_y=ys,
                         num_classes=np.full(len(test_counts), C, np.int32),
                         input_shape=shape, description="random, unequal test sets")


def _config(algorithm, num_clients, model="mlp"):
  c = config_base.base_config()
  c.algorithm = algorithm
  c.data.num_clients = num_clients
  c.model.name = model
  c.model.hidden_sizes = (8, 8)
  c.model.cnn_features = (2, 3)
  c.model.cnn_dense = 4
  c.batch_size = 2
  c.fl.local_steps = 1
  return c


def _reference(algorithm, state, federation):
  """Per-client correct counts and loss sums from the whole padded test arrays."""
  _, test = data.to_host(federation)
  logits = np.asarray(algorithm.logits(state, jnp.asarray(test.x)), np.float64)
  correct, loss_sum = [], []
  for m, n in enumerate(test.counts):
    z, y = logits[m, :n, :C], np.asarray(test.y[m, :n])
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    correct.append(int((z.argmax(axis=1) == y).sum()))
    loss_sum.append(float(-log_p[np.arange(n), y].sum()))
  return np.array(correct), np.array(loss_sum)


@pytest.mark.parametrize("name,model", [
    ("mtsl", "mlp"), ("local", "mlp"), ("fedavg", "mlp"), ("fedrep", "mlp"), ("fedem", "mlp"),
    ("splitfed_v2", "mlp"), ("centralized", "mlp"),
    # CNNs: evaluation's forward-only convolutions (shared kernels: XLA's; per-client
    # kernels: patches) against training's patches in the reference.
    ("mtsl", "cnn"), ("local", "cnn"), ("fedavg", "cnn")])
def test_grouped_evaluation_equals_the_padded_reference(name, model):
  counts = [40, 3, 17, 1, 38, 5]
  federation = _federation(counts, seed=1, shape=(8, 8, 1) if model == "cnn" else (D,))
  algorithm = algorithms.build_algorithm(_config(name, len(counts), model), federation)
  state = jax.jit(algorithm.init_state)()
  _, test = data.to_host(federation)
  evaluate, layout = evaluation.evaluator(algorithm, jax.eval_shape(algorithm.init_state),
                                          test, eval_batch_size=8)
  assert len(layout.groups) > 1 and layout.computed_rows < 6 * 40
  raw = jax.device_get(evaluate(state))
  want_correct, want_loss = _reference(algorithm, state, federation)
  np.testing.assert_array_equal(raw["correct"], want_correct)
  np.testing.assert_allclose(raw["loss_sum"], want_loss, rtol=1e-5, atol=1e-5)


def test_groups_are_not_used_when_a_groups_copy_of_client_models_exceeds_the_bound():
  # The grouping of test_best_groups_minimise_the_rows_computed, two clients per group: at
  # 600 bytes per client a group copies 1,200 bytes, over a 1,000-byte bound.
  args = ([3, 10, 1, 9], 64)
  assert len(evaluation.plan_layout(*args, max_groups=2, bytes_per_client=600,
                                    memory_bytes=10_000).groups) == 2
  single = evaluation.plan_layout(*args, max_groups=2, bytes_per_client=600,
                                  memory_bytes=1000)
  assert single.groups == (evaluation.EvalGroup(None, 10, 10),)


def test_gathered_bytes_per_client_count_the_client_models_a_group_copies():
  """Local-only MLP D-8-8-C: each client's model is (4x8 + 8) + (8x8 + 8) + (8x5 + 5) =
  157 float32 = 628 bytes; the trace also holds per-client reshapes of the biases and
  indices (a few dozen values). FedAvg's one global model: nothing per client but the
  index."""
  federation = _federation([3, 3], seed=0)
  example = jax.ShapeDtypeStruct((D,), np.float32)
  local = algorithms.build_algorithm(_config("local", 2), federation)
  got = evaluation.gathered_bytes_per_client(local.logits, jax.eval_shape(local.init_state),
                                             example)
  assert 628 <= got <= 628 + 4 * 64
  fedavg = algorithms.build_algorithm(_config("fedavg", 2), federation)
  assert evaluation.gathered_bytes_per_client(
      fedavg.logits, jax.eval_shape(fedavg.init_state), example) <= 16
