"""The evaluation's memory and time on a PFLlib-like federation: before issue #18 and now.

FedAvg's CNN ('same' or 'valid' padding) evaluated on every client's test set of a label-
Dirichlet(0.1) split of 70,000 MNIST-shaped random examples over 20 clients (a quarter of
each client's examples for testing): XLA's memory analysis of the compiled evaluation
(temporaries) and its time, for

  * before: every client padded to the largest, chunks of `eval_batch_size` (512), the
    patches convolution (`conv_impl='patches'`, the CPU's formulation then);
  * now: `evaluation.evaluator` (clients grouped by test-set size, chunks bounded by the
    traced activation bytes, convolutions chosen per use).

  python benchmarks/eval_memory.py            # ~1 minute on 2 cores
"""

import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from mtsl_jax import algorithms, config_base, data, evaluation
from mtsl_jax.data import partition


def federation(seed: int = 1) -> data.Federation:
  """Random test examples (train sets are tiny: only evaluation is measured)."""
  labels = np.repeat(np.arange(10), 7000)
  parts = partition.partition_dirichlet(labels, 20, 0.1, 10, np.random.default_rng(seed))
  sizes = np.array([len(p) for p in parts])
  test = sizes - (sizes * 3) // 4
  rng = np.random.default_rng(0)
  train_x = tuple(np.zeros((4, 28, 28, 1), np.float32) for _ in test)
  train_y = tuple(np.zeros(4, np.int32) for _ in test)
  test_x = tuple(rng.normal(size=(n, 28, 28, 1)).astype(np.float32) for n in test)
  test_y = tuple(rng.integers(0, 10, n).astype(np.int32) for n in test)
  return data.Federation(train_x, train_y, test_x, test_y, np.full(20, 10, np.int32),
                         (28, 28, 1), "Dirichlet(0.1) test sets")


def measure(fed: data.Federation, padding: str, before: bool) -> dict:
  """Rows computed, XLA temporaries and seconds of one evaluation (best of 2)."""
  c = config_base.base_config()
  c.algorithm, c.data.num_clients = "fedavg", 20
  c.model.name, c.model.cnn_features, c.model.cnn_dense = "cnn", (32, 64), 512
  c.model.padding = padding
  c.model.conv_impl = "patches" if before else "auto"
  alg = algorithms.build_algorithm(c, fed)
  abstract = jax.eval_shape(alg.init_state)
  _, test = data.to_host(fed)
  x = np.asarray(test.x)
  if before:
    layout = evaluation.plan_layout(test.counts, c.eval_batch_size, group=False)
  else:
    _, layout = evaluation.evaluator(alg, abstract, test, c.eval_batch_size)
  arrays = jax.device_put(evaluation.arrange(x, test.y, test.counts, layout))
  compiled = jax.jit(evaluation.make_evaluate(alg.logits, alg.num_classes_M, layout)).lower(
      abstract, arrays).compile()
  state = jax.jit(alg.init_state)()
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(state, arrays))
    times.append(time.perf_counter() - t0)
  return {"rows": layout.computed_rows, "real": layout.real_rows or int(test.counts.sum()),
          "temp_gib": compiled.memory_analysis().temp_size_in_bytes / 2 ** 30,
          "seconds": min(times)}


def main():
  fed = federation()
  print("| CNN padding | evaluation | rows computed / real | XLA temporaries GiB | s |")
  print("|---|---|---|---|---|")
  for padding in ("same", "valid"):
    for before in (True, False):
      m = measure(fed, padding, before)
      print(f"| {padding} | {'before #18' if before else 'now'} | {m['rows']:,} / "
            f"{m['real']:,} | {m['temp_gib']:.2f} | {m['seconds']:.2f} |")


if __name__ == "__main__":
  main()
