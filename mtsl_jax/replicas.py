"""Replica groups: runs that share one program, stacked and trained as ONE vmapped program.

A replica group is a list of configs that differ only in values that reach the compiled
step as state or data, never as constants of the program: the seed (each replica builds
its own federation, initial parameters and keys), learning rates held in the optimizer
state (`learning_rate_in_state`, which the learning-rate grid sets), and any other field
with that property. Whether a list of runs qualifies is decided on the programs
themselves, not on a list of field names (`same_program`): every replica's step and
evaluation are traced to jaxprs, which must be equal, constants included. Then replica
0's step, `jax.vmap`-ed over a leading replica axis of states (and of data, when the
replicas' data differ), computes every replica's step at once.

What this module provides to `train.train_replicas` (the loop itself is the one of
`train.py`; per-replica divergence is `loop.Runner`'s):
  * `varying_fields` / `labels`: which config fields differ, and each replica's values;
  * `same_program`: whether the runs share one program, and why not;
  * `stack_data`: every replica's train and test arrays on a leading axis, zero-padded to
    the largest client (counts unchanged, so sampling and evaluation never read the
    padding), or one copy when every replica trains on the same data;
  * `group_data`: whether runs form a group (the checks above) and its data;
  * `initial_states`: every replica's initial state from as few initializations as can be;
  * `group_fingerprint`: what a group checkpoint was computed from;
  * `freeze_diverged` / `read_divergence`: reporting a replica that diverged, and reading
    the report back when a group resumes;
  * `unstack`: one replica's slice of the group state.
"""

import dataclasses
import pathlib
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtsl_jax import data, fingerprint, loop, metric_writers, optimizers

PyTree = Any


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return fingerprint.flatten(config)


def varying_fields(configs: Sequence[ml_collections.ConfigDict]) -> list[str]:
  """The dotted config fields whose values differ between the configs, sorted."""
  flats = [_flat(c) for c in configs]
  keys = sorted(set().union(*flats))
  return [k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats[1:])]


def labels(configs: Sequence[ml_collections.ConfigDict]) -> list[dict[str, Any]]:
  """Each replica's values of the varying fields, e.g. [{'seed': 0}, {'seed': 1}]."""
  fields = varying_fields(configs)
  flats = [_flat(c) for c in configs]
  return [{k: f.get(k) for k in fields} for f in flats]


def _jaxpr_signature(fn, *args) -> tuple[str, list[np.ndarray]]:
  closed = jax.make_jaxpr(fn)(*args)
  return str(closed.jaxpr), [np.asarray(c) for c in closed.consts]


def _same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
  return len(a) == len(b) and all(
      x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True)
      for x, y in zip(a, b))


def same_program(algorithms: Sequence, train_shapes: PyTree,
                 test_x_shape: jax.ShapeDtypeStruct) -> tuple[bool, str]:
  """Whether replica 0's step and evaluation compute every replica's (and why not).

  Args:
    algorithms: each replica's built Algorithm.
    train_shapes: the shapes of one replica's (padded) train data.
    test_x_shape: the shape of one evaluation chunk's inputs [M, chunk, ...].

  Returns:
    (True, '') or (False, the first difference found).
  """
  first = algorithms[0]
  state0 = jax.eval_shape(first.init_state)
  sig_step = _jaxpr_signature(first.step, state0, train_shapes)
  sig_eval = _jaxpr_signature(first.logits, state0, test_x_shape)
  for r, alg in enumerate(algorithms[1:], start=1):
    state = jax.eval_shape(alg.init_state)
    if jax.tree.structure(state) != jax.tree.structure(state0) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state0))):
      return False, f"replica {r}'s state differs in structure, shape or dtype"
    if not np.array_equal(alg.num_classes_M, first.num_classes_M):
      return False, f"replica {r}'s label-space sizes differ ({alg.num_classes_M})"
    step = _jaxpr_signature(alg.step, state0, train_shapes)
    if step[0] != sig_step[0] or not _same_arrays(step[1], sig_step[1]):
      return False, (f"replica {r}'s step is another program (a differing field is a "
                     "constant of the step, e.g. 'data_size' task or aggregation weights "
                     "over different train counts, or a learning rate not held in the "
                     "optimizer state)")
    logits = _jaxpr_signature(alg.logits, state0, test_x_shape)
    if logits[0] != sig_eval[0] or not _same_arrays(logits[1], sig_eval[1]):
      return False, f"replica {r}'s evaluation is another program"
  return True, ""


_RATES = ("server_optimizer.learning_rate", "client_optimizer.learning_rate")


def _with_rate(state: PyTree, side: str, learning_rate: float) -> PyTree:
  """`state` with the rate in its `side`'s optimizer state replaced (if it keeps one)."""
  part = getattr(state, side, None)
  if part is None or not hasattr(part, "opt_state"):
    return state
  return state.replace(**{side: part.replace(
      opt_state=optimizers.with_learning_rate(part.opt_state, learning_rate))})


def initial_states(configs: Sequence[ml_collections.ConfigDict],
                   algorithms: Sequence) -> PyTree:
  """Every replica's initial state, stacked [R, ...], from as few initializations as can be.

  Replicas whose configs differ only in learning rates held in the optimizer state
  (`learning_rate_in_state`: a learning-rate grid) start from one initialization with
  each rate written into the optimizer states (`optimizers.with_learning_rate`; the
  rate is the only value that differs). The distinct initializations run as ONE jitted
  program: a jit per replica compiles each closure anew, and eagerly, op by op, the
  closures' inner jits recompile per replica too (16 grid points of the default MLP:
  58 s and 63 s of compilation on the 2-core CPU; one program: 8 s).

  Args:
    configs: the replicas' configs.
    algorithms: the replicas' built Algorithms.

  Returns:
    The stacked initial states (on the device).
  """
  def key(c):
    flat = _flat(c)
    if c.server_optimizer.learning_rate_in_state and c.client_optimizer.learning_rate_in_state:
      for field in _RATES:
        flat.pop(field)
    return repr(sorted(flat.items()))

  first_of = {}
  for r, c in enumerate(configs):
    first_of.setdefault(key(c), r)
  firsts = sorted(set(first_of.values()))
  inits = dict(zip(firsts, jax.jit(lambda: [algorithms[r].init_state() for r in firsts])()))
  states = []
  for r, c in enumerate(configs):
    first = first_of[key(c)]
    state = inits[first]
    if r != first:  # the same initialization but for the rates in the optimizer states
      state = _with_rate(state, "server", c.server_optimizer.learning_rate)
      state = _with_rate(state, "clients", c.client_optimizer.learning_rate)
    states.append(state)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(tree: PyTree, r: int) -> PyTree:
  """Replica r's slice of a stacked tree."""
  return jax.tree.map(lambda a: a[r], tree)


def _pad_examples(arrays: data.ClientArrays, n: int) -> data.ClientArrays:
  """Zero-pads the example axis to `n` (in numpy); counts are unchanged, so the padding
  is never read."""
  x, y = np.asarray(arrays.x), np.asarray(arrays.y)
  pad = n - int(x.shape[1])
  return arrays.replace(x=np.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)),
                        y=np.pad(y, [(0, 0), (0, pad)]))


@dataclasses.dataclass
class GroupData:
  """A replica group's data on the host, ready to place.

  Attributes:
    train: train ClientArrays, stacked [R, M, N, ...] unless `shared`.
    test_x, test_y, test_counts: test arrays padded to whole evaluation chunks, stacked
      likewise.
    shared: every replica trains and evaluates on the same data: one copy, not stacked
      (the step is vmapped with the data unbatched).
    chunk: the evaluation chunk size.
  """
  train: data.ClientArrays
  test_x: np.ndarray
  test_y: np.ndarray
  test_counts: np.ndarray
  shared: bool
  chunk: int


def stack_data(federations: Sequence[data.Federation], eval_batch_size: int) -> GroupData:
  """Every replica's data, padded to common shapes and stacked (one copy if all equal).

  Args:
    federations: each replica's federation.
    eval_batch_size: the configs' evaluation chunk size.

  Returns:
    A GroupData (numpy, on the host).
  """
  digests = [fingerprint.federation_digest(f) for f in federations]
  shared = all(d == digests[0] for d in digests[1:])
  on_host = [data.to_host(f) for f in (federations[:1] if shared else federations)]
  n_train = max(int(tr.x.shape[1]) for tr, _ in on_host)
  n_test = max(int(te.x.shape[1]) for _, te in on_host)
  chunk = min(eval_batch_size, n_test)
  # Whole evaluation chunks: the test axis padded to a multiple of `chunk` at once.
  tests = [_pad_examples(te, -(-n_test // chunk) * chunk) for _, te in on_host]
  trains = [_pad_examples(tr, n_train) for tr, _ in on_host]
  if shared:
    return GroupData(trains[0], tests[0].x, tests[0].y, np.asarray(tests[0].counts), True,
                     chunk)
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
  return GroupData(stack(trains), stack([t.x for t in tests]), stack([t.y for t in tests]),
                   stack([np.asarray(t.counts) for t in tests]), False, chunk)


def group_fingerprint(configs: Sequence[ml_collections.ConfigDict],
                      federations: Sequence[data.Federation]) -> dict:
  """What a group checkpoint was computed from: the common config, every replica's values
  of the varying fields, and a digest of every replica's data."""
  digest = fingerprint.data_digest([np.frombuffer(fingerprint.federation_digest(f).encode(),
                                                  np.uint8) for f in federations])
  varying = labels(configs)
  fp = fingerprint.run_fingerprint(configs[0], digest, replicas=varying)
  for field in varying[0]:
    fp["config"].pop(field, None)
  return fp


def group_data(configs: Sequence[ml_collections.ConfigDict], federations: Sequence,
               algorithms: Sequence, allow_single: bool = False) -> tuple[GroupData | None, str]:
  """The group's data if the runs can train as one replica group, else why not.

  Args:
    configs, federations, algorithms: each run's.
    allow_single: one run may form a group of one.

  Returns:
    (GroupData, '') or (None, the reason).
  """
  if len(configs) < (1 if allow_single else 2):
    return None, "fewer than two runs"
  if jax.process_count() > 1:
    return None, "a multi-process run (each run uses the mesh of all processes' devices)"
  if any(c.parallel.client_devices != 1 for c in configs):
    return None, "clients are sharded over several devices (parallel.client_devices)"
  shared_loop = sorted(set(varying_fields(configs)) & LOOP_FIELDS)
  if shared_loop:
    return None, f"the runs differ in {shared_loop}, which the group's one loop shares"
  group = stack_data(federations, configs[0].eval_batch_size)
  one = (lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)) if group.shared else (
      lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype))
  train_shapes = jax.tree.map(one, group.train)
  test_x = one(group.test_x)
  chunk_x = jax.ShapeDtypeStruct(test_x.shape[:1] + (group.chunk,) + test_x.shape[2:],
                                 test_x.dtype)
  ok, reason = same_program(algorithms, train_shapes, chunk_x)
  return (group, "") if ok else (None, reason)


def read_divergence(workdir: pathlib.Path) -> str:
  """The divergence a replica's metrics.jsonl records (a group resumed after it froze)."""
  for record in reversed(metric_writers.read_metrics(workdir)):
    if "diverged" in record:
      return record["diverged"]
  return "diverged before the checkpoint this group resumed from"


def freeze_diverged(names: Sequence[str], state: loop.Replicas, summary: dict,
                    diverged: dict[int, str], writers: Sequence,
                    verbose: bool) -> loop.Replicas:
  """Reports every replica that diverged in this chunk and makes sure it is frozen.

  The runner froze replicas at a non-finite step; a replica whose parameters an update
  overflowed at the chunk's end (loss and gradients still finite) is frozen here.

  Args:
    names: how messages name each replica.
    state: the group state after the chunk.
    summary: the chunk's `loop.Runner` summary, on the host.
    diverged: replica -> message of those reported so far; updated in place.
    writers: each replica's metric writer (the message is recorded as 'diverged').
    verbose: also print each message.

  Returns:
    The group state with every diverged replica frozen.
  """
  frozen = np.asarray(state.frozen).copy()
  for r in range(len(names)):
    if r in diverged:
      continue
    part = {"bad_step": summary["bad_step"][r], "state_finite": summary["state_finite"][r],
            "last_step": summary["last_step"][r],
            "flags": {k: v[r] for k, v in summary["flags"].items()}}
    need_state = int(part["bad_step"]) < 0 and not bool(part["state_finite"])
    message = loop.divergence_message(
        part, unstack(state.states, r) if need_state else None, group=True)
    if message is None:
      continue
    diverged[r] = f"{names[r]}: {message}"
    frozen[r] = True
    at = int(part["bad_step"]) + 1 if int(part["bad_step"]) >= 0 else int(part["last_step"])
    writers[r].write_event(at, "diverged", diverged[r])
    logging.warning("replica diverged: %s", diverged[r])
    if verbose:
      print(f"train_replicas: {diverged[r]}", flush=True)
  if frozen.any() and not np.array_equal(frozen, np.asarray(state.frozen)):
    state = state.replace(frozen=jnp.asarray(frozen))
  return state


# Fields the group's one loop reads from the first config: equal across its runs.
LOOP_FIELDS = {"num_steps", "log_every", "eval_every", "checkpoint_every", "eval_batch_size",
               "max_checkpoints_to_keep", "progress_bar", "disable_jit",
               "parallel.client_devices"}


def default_group_dir(workdirs: Sequence[str | pathlib.Path],
                      configs: Sequence[ml_collections.ConfigDict]) -> pathlib.Path:
  """`<parent of workdir 0>/replica_groups/<workdir 0's name>_<varying fields>_<digest>`.

  The digest is of every replica's values of the varying fields, so two groups that
  differ in them never share a directory.
  """
  first = pathlib.Path(workdirs[0])
  fields = varying_fields(configs)
  tag = fingerprint.data_digest([np.frombuffer(repr(labels(configs)).encode(), np.uint8)])
  return first.parent / "replica_groups" / f"{first.name}_{'+'.join(fields)}_{tag[:10]}"
