"""Per-task test evaluation: each client's model on its own test split.

Per-task test accuracy is the headline metric of the project: the mean over tasks, the
mean weighted by test-set size, and the worst task. Evaluation runs on the device, every
client's model vmapped, in chunks (`lax.map`) so that memory stays bounded for any
test-set size.

Clients' test sets differ in size (a Dirichlet partition gives some clients ten times the
examples of others), and a vmapped evaluation computes every client's rows up to the
largest client's count: padding that is computed and masked. `plan_layout` sorts the
clients by test-set size and cuts them into a few groups (at most `MAX_GROUPS`), each
padded only to its own largest client, chosen to minimise the rows computed; each group is
evaluated with its own clients' models (`Algorithm.logits(state, x, clients)`). On
label-Dirichlet(0.1) splits of MNIST's 70,000 examples over 20 clients, a quarter of each
client's for testing as PFLlib does (about 17,500 test examples; four draws), that cuts
the rows computed from 46,560-52,320 to 19,938-21,680. Chunks are sized so that one
chunk's activations stay within `EVAL_MEMORY_BYTES` (the model's activation bytes per
example are counted from its trace, `activation_bytes_per_example`).

A sharded or replicated run evaluates all clients as one group in their own order (no
gather of client state across devices or replicas).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from mtsl_jax import models, task_losses

PyTree = Any

# One chunk's activations (forward only, all intermediate values of the traced model
# summed, an overestimate of what XLA keeps live) stay within this many bytes.
EVAL_MEMORY_BYTES = 1 << 30
# Each group is one more copy of the model in the evaluation program (compile time) and
# one gather of its clients' parameters per evaluation.
MAX_GROUPS = 4
# Groups are used only when they save at least this fraction of the rows computed ...
MIN_SAVING = 0.2
# ... and each group must save this fraction of the rows one group would compute.
GROUP_COST = 0.02
# The grouping's dynamic program considers at most this many group boundaries.
_MAX_BOUNDARIES = 256


class EvalGroup(NamedTuple):
  """Clients evaluated together: their test arrays padded to one length.

  Attributes:
    clients: positions on the client axis, largest test set first; None for all clients
      in their own order (no gather of client state).
    length: examples per client in the group's arrays, a multiple of `chunk`.
    chunk: examples per client per `lax.map` iteration.
  """
  clients: tuple[int, ...] | None
  length: int
  chunk: int


class EvalLayout(NamedTuple):
  """How the test sets are laid out and chunked (static: part of the jitted program).

  Attributes:
    num_clients: M.
    groups: the groups, together covering every client with test examples once.
    real_rows: test examples over all clients.
    computed_rows: rows the evaluation computes (real + padding).
  """
  num_clients: int
  groups: tuple[EvalGroup, ...]
  real_rows: int
  computed_rows: int


def _chunk(length: int, max_chunk: int) -> tuple[int, int]:
  """(chunk, padded length): the fewest chunks of at most `max_chunk`, evened out."""
  num_chunks = -(-length // max(1, max_chunk))
  chunk = -(-length // num_chunks)
  return chunk, chunk * num_chunks


def _max_chunk(eval_batch_size: int, group_size: int, bytes_per_example: int,
               memory_bytes: int) -> int:
  if bytes_per_example <= 0:
    return eval_batch_size
  return max(1, min(eval_batch_size, memory_bytes // (group_size * bytes_per_example)))


def _best_groups(sorted_counts: np.ndarray, max_groups: int) -> list[tuple[int, int]]:
  """Contiguous groups [i, j) of positive counts sorted descending, minimising the rows
  computed, Σ (j - i) · counts[i], plus `GROUP_COST` of the most rows per group used.

  A group of sorted clients i..j-1 pads every client to its first (largest) count. Exact
  dynamic program over group boundaries (every position where the count changes, thinned
  to `_MAX_BOUNDARIES` evenly spaced ones for very many distinct counts); among equal
  totals the fewest groups.
  """
  m = len(sorted_counts)
  starts = np.flatnonzero(np.r_[True, sorted_counts[1:] != sorted_counts[:-1]])
  if len(starts) > _MAX_BOUNDARIES:
    starts = np.unique(starts[np.linspace(0, len(starts) - 1, _MAX_BOUNDARIES).astype(int)])
  bounds = np.r_[starts, m]  # candidate boundaries; a group spans bounds[a]..bounds[b]
  n = len(bounds)
  inf = np.iinfo(np.int64).max // 4
  penalty = int(np.ceil(GROUP_COST * m * sorted_counts[0]))
  size = bounds[None, :] - bounds[:, None]
  cost = np.where(size > 0, size * sorted_counts[np.minimum(bounds, m - 1)][:, None] + penalty,
                  inf)  # cost[a, b]: one group from bounds[a] to bounds[b]
  best = np.full((max_groups + 1, n), inf, np.int64)
  arg = np.zeros((max_groups + 1, n), np.int64)
  best[0, 0] = 0
  for g in range(1, max_groups + 1):
    total = best[g - 1][:, None] + cost  # [a, b]
    arg[g] = np.argmin(total, axis=0)
    best[g] = np.minimum(total[arg[g], np.arange(n)], inf)
  g = int(np.argmin(best[:, n - 1]))
  groups, b = [], n - 1
  while g > 0:
    a = int(arg[g, b])
    groups.append((int(bounds[a]), int(bounds[b])))
    b, g = a, g - 1
  return groups[::-1]


def plan_layout(counts_M, eval_batch_size: int, bytes_per_example: int = 0, *,
                group: bool = True, bytes_per_client: int = 0,
                memory_bytes: int = EVAL_MEMORY_BYTES,
                max_groups: int = MAX_GROUPS, min_saving: float = MIN_SAVING) -> EvalLayout:
  """The evaluation layout of clients with `counts_M` test examples.

  Args:
    counts_M: test examples per client.
    eval_batch_size: the largest chunk, in examples per client (`config.eval_batch_size`).
    bytes_per_example: activation bytes of one example (`activation_bytes_per_example`);
      0 leaves chunks at `eval_batch_size`.
    group: False evaluates all clients as one group in their own order (sharded and
      replicated runs).
    bytes_per_client: what a group's evaluation copies per client
      (`gathered_bytes_per_client`): groups are used only if the largest group's copy
      stays within `memory_bytes` (a million clients' models are not copied to save rows).
    memory_bytes: bound on one chunk's activations, and on one group's copy.
    max_groups: most groups.
    min_saving: the fraction of computed rows groups must save to be used.

  Returns:
    The EvalLayout.
  """
  counts = np.asarray(counts_M, np.int64)
  m, largest = len(counts), int(counts.max())

  def one_group():
    chunk, length = _chunk(largest, _max_chunk(eval_batch_size, m, bytes_per_example,
                                               memory_bytes))
    return EvalLayout(m, (EvalGroup(None, length, chunk),), int(counts.sum()), m * length)

  if not group or m == 1:
    return one_group()
  # Clients without test examples are left out (their sums stay zero).
  order = np.argsort(-counts, kind="stable")
  order = order[counts[order] > 0]
  sorted_counts = counts[order]
  spans = _best_groups(sorted_counts, max_groups)
  groups = []
  for i, j in spans:
    chunk, length = _chunk(int(sorted_counts[i]), _max_chunk(
        eval_batch_size, j - i, bytes_per_example, memory_bytes))
    groups.append(EvalGroup(tuple(int(c) for c in order[i:j]), length, chunk))
  computed = sum(len(g.clients) * g.length for g in groups)
  single = one_group()
  largest_copy = max(len(g.clients) for g in groups) * bytes_per_client
  if computed > (1 - min_saving) * single.computed_rows or largest_copy > memory_bytes:
    return single
  return EvalLayout(m, tuple(groups), int(counts.sum()), computed)


def arrange(x: np.ndarray, y: np.ndarray, counts: np.ndarray,
            layout: EvalLayout) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
  """The test arrays of each group of `layout` (host numpy).

  Args:
    x, y: every client's test examples, padded to a common length: [M, N, ...], [M, N].
    counts: real examples per client [M].
    layout: from `plan_layout` for these counts.

  Returns:
    Per group (x [S, L, ...], y [S, L], counts [S]), padded with zeros to the group's L.
  """
  out = []
  for g in layout.groups:
    ids = np.arange(layout.num_clients) if g.clients is None else np.asarray(g.clients)
    xs, ys = np.asarray(x)[ids, :g.length], np.asarray(y)[ids, :g.length]
    pad = g.length - xs.shape[1]
    if pad:
      xs = np.pad(xs, [(0, 0), (0, pad)] + [(0, 0)] * (xs.ndim - 2))
      ys = np.pad(ys, [(0, 0), (0, pad)])
    out.append((xs, ys, np.asarray(counts)[ids]))
  return tuple(out)


def _sizes(jaxpr) -> int:
  """Bytes of every value a jaxpr's primitive equations produce.

  An equation that calls sub-jaxprs (jit, custom_jvp, ...) counts what they compute, not
  its own outputs again.
  """
  total = 0
  for eqn in jaxpr.eqns:
    subs = list(jax_core.jaxprs_in_params(eqn.params))
    if subs:
      total += sum(_sizes(sub) for sub in subs)
    else:
      total += sum(int(np.prod(v.aval.shape)) * v.aval.dtype.itemsize for v in eqn.outvars
                   if hasattr(v.aval, "shape"))
  return total


def activation_bytes_per_example(logits_fn: Callable, abstract_state: PyTree,
                                 example: jax.ShapeDtypeStruct, num_clients: int = 0) -> int:
  """Bytes of all values the forward pass computes per example (from its trace).

  The difference between the traces of one client's model on two examples and on one,
  so that work on the parameters alone (the gather of the client's state) is left out.

  Args:
    logits_fn: `Algorithm.logits`.
    abstract_state: the state's shapes (`jax.eval_shape(algorithm.init_state)`).
    example: shape and dtype of one test example.
    num_clients: 0 when `logits_fn` takes a subset of clients (one client is traced);
      else M, and all M clients' models are traced at once (per example of each).

  Returns:
    Bytes per example (>= 0).
  """
  # One client's model where the logits take a subset of clients; else all M at once.
  clients = None if num_clients else jnp.zeros((1,), jnp.int32)
  traced_clients = num_clients or 1

  def traced(rows):
    x = jax.ShapeDtypeStruct((traced_clients, rows) + tuple(example.shape), example.dtype)
    fn = lambda s, x: logits_fn(s, x, clients)
    with models.forward_only():  # as `make_evaluate` traces it
      return _sizes(jax.make_jaxpr(fn)(abstract_state, x).jaxpr)

  return max(0, traced(2) - traced(1)) // traced_clients


def gathered_bytes_per_client(logits_fn: Callable, abstract_state: PyTree,
                              example: jax.ShapeDtypeStruct) -> int:
  """Bytes a group's evaluation copies per client: its share of the state `logits` gathers
  (`Algorithm.logits(state, x, clients)`), and whatever else scales with the clients.

  The difference between the traces of two clients' models and one client's, on one
  example each, less that example's activations.

  Args:
    logits_fn: `Algorithm.logits` (one that takes client subsets).
    abstract_state: the state's shapes.
    example: shape and dtype of one test example.

  Returns:
    Bytes per client (>= 0).
  """
  def traced(clients):
    x = jax.ShapeDtypeStruct((clients, 1) + tuple(example.shape), example.dtype)
    fn = lambda s, x: logits_fn(s, x, jnp.zeros((clients,), jnp.int32))
    with models.forward_only():
      return _sizes(jax.make_jaxpr(fn)(abstract_state, x).jaxpr)

  per_example = activation_bytes_per_example(logits_fn, abstract_state, example)
  return max(0, traced(2) - traced(1) - per_example)


def make_evaluate(logits_fn: Callable, num_classes_M, layout: EvalLayout) -> Callable:
  """Builds a jitted `evaluate(state, test) -> {'correct', 'loss_sum'}` ([M] each).

  Args:
    logits_fn: `Algorithm.logits`, `(state, x [S, B, ...], clients) -> logits [S, B, C]`.
    num_classes_M: label-space size per task.
    layout: the test layout; `test` is `arrange`'s output (on the device).

  Returns:
    The jitted evaluation function; clients without test examples get zeros.
  """
  classes_M = jnp.asarray(num_classes_M)

  def group_sums(state, group: EvalGroup, x, y, counts):
    clients = None if group.clients is None else jnp.asarray(group.clients, jnp.int32)
    classes = classes_M if clients is None else classes_M[clients]

    def one_chunk(i):
      xs = jax.lax.dynamic_slice_in_dim(x, i * group.chunk, group.chunk, axis=1)
      ys = jax.lax.dynamic_slice_in_dim(y, i * group.chunk, group.chunk, axis=1)
      valid = (i * group.chunk + jnp.arange(group.chunk))[None, :] < counts[:, None]
      logits = logits_fn(state, xs, clients)
      correct = (task_losses.masked_predictions(logits, classes[:, None]) == ys) & valid
      example_losses = task_losses.cross_entropy(logits, ys, classes[:, None])
      return correct.sum(axis=1), jnp.where(valid, example_losses, 0.0).sum(axis=1)

    correct, loss_sum = jax.lax.map(one_chunk, jnp.arange(group.length // group.chunk))
    return clients, correct.sum(axis=0), loss_sum.sum(axis=0)

  def evaluate(state, test):
    correct = jnp.zeros((layout.num_clients,), jnp.int32)
    loss_sum = jnp.zeros((layout.num_clients,), jnp.float32)
    for group, (x, y, counts) in zip(layout.groups, test):
      with models.forward_only():  # the fastest forward convolution per use on the CPU
        clients, c, loss = group_sums(state, group, x, y, counts)
      if clients is None:
        correct, loss_sum = c.astype(jnp.int32), loss
      else:
        correct, loss_sum = correct.at[clients].set(c), loss_sum.at[clients].set(loss)
    return {"correct": correct, "loss_sum": loss_sum}

  return jax.jit(evaluate)


def layout_for(algorithm, abstract_state: PyTree, test, eval_batch_size: int,
               group: bool = True) -> EvalLayout:
  """The evaluation layout of one federation's test split for `algorithm`'s models.

  Args:
    algorithm: the run's `Algorithm`.
    abstract_state: its state's shapes.
    test: the federation's host test arrays (`data.to_host(federation)[1]`).
    eval_batch_size: `config.eval_batch_size`.
    group: as `plan_layout` (all clients in one group anyway where the algorithm's
      logits take no client subsets).

  Returns:
    The EvalLayout, chunks bounded by the model's traced activation bytes.
  """
  x = np.asarray(test.x)
  example = jax.ShapeDtypeStruct(x.shape[2:], x.dtype)
  subsets = algorithm.client_subsets
  grouped = group and subsets
  per_example = activation_bytes_per_example(algorithm.logits, abstract_state, example,
                                             0 if subsets else x.shape[0])
  per_client = (gathered_bytes_per_client(algorithm.logits, abstract_state, example)
                if grouped else 0)
  return plan_layout(test.counts, eval_batch_size, per_example, group=grouped,
                     bytes_per_client=per_client)


def evaluator(algorithm, abstract_state: PyTree, test, eval_batch_size: int,
              group: bool = True) -> tuple[Callable, EvalLayout]:
  """`evaluate(state) -> raw sums` on one federation's test split, data on the device.

  Args:
    algorithm, abstract_state, test, eval_batch_size, group: as `layout_for`.

  Returns:
    (evaluate, layout): `evaluate(state)` returns `make_evaluate`'s dict (on the device).
  """
  layout = layout_for(algorithm, abstract_state, test, eval_batch_size, group)
  data = jax.device_put(arrange(np.asarray(test.x), test.y, test.counts, layout))
  evaluate = make_evaluate(algorithm.logits, algorithm.num_classes_M, layout)
  return (lambda state: evaluate(state, data)), layout


def summarize(raw: dict, counts_M: np.ndarray) -> dict[str, Any]:
  """Headline metrics from the raw per-client sums (host numpy).

  Args:
    raw: output of `evaluate`, on the host.
    counts_M: test examples per client.

  Returns:
    'test/accuracy' and 'test/loss' per task, and the mean, size-weighted mean and worst
    task accuracy.
  """
  counts = np.asarray(counts_M, np.float64)
  acc = np.asarray(raw["correct"], np.float64) / counts
  loss = np.asarray(raw["loss_sum"], np.float64) / counts
  return {"test/accuracy": acc, "test/loss": loss,
          "test/accuracy_mean": float(acc.mean()),
          "test/accuracy_weighted": float(np.asarray(raw["correct"]).sum() / counts.sum()),
          "test/accuracy_worst": float(acc.min()),
          "test/loss_mean": float(loss.mean())}


def stacked_layout(test_x_shape: Sequence[int], eval_batch_size: int) -> EvalLayout:
  """The one-group layout of test arrays already padded to a common length N (replica
  groups pad to a multiple of their chunk, `replicas.stack_data`)."""
  m, n = int(test_x_shape[0]), int(test_x_shape[1])
  chunk = min(eval_batch_size, n)
  return EvalLayout(m, (EvalGroup(None, n, chunk),), 0, m * n)
