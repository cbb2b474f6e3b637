"""Federated rounds in PFLlib's MNIST setting: the library against per-client PyTorch loops.

The workload federated-learning researchers know best, PFLlib's MNIST: 20 clients, the
unpadded FedAvg CNN (conv5x5-32 'valid', 2x2 pool, conv5x5-64 'valid', pool, dense
1024->512, dense 10; 582,026 parameters; `configs/pfllib_mnist.py`), batch 10, one local
epoch of SGD per round (client m takes k_m = ceil(n_m / 10) steps), learning rate 0.005,
FedAvg with data-size weights. The federation is PFLlib-like and deterministic: 70,000
random examples of MNIST's shape (the values do not affect speed) split over the clients
by a label-Dirichlet(0.1) partition (`data/partition.py`, every client at least 40
examples, PFLlib's least_samples = batch / (1 - 0.75)), each client's examples 75% train
/ 25% test as PFLlib splits them.

Rows (each in its own subprocess; within a row the columns are timed in turns, median of
--repeats, as `bench_step.py` does):

  * pfllib_round: one FedAvg round of one local epoch. library: the algorithm's step in
    the multi-step runner train.py uses (`loop.make_multi_step`); torch: `torch_fl.py`'s
    per-client loop (DataLoader-like shuffles, the last batch smaller). The vmapped round
    steps every client max_m k_m times and masks the extra steps: the waste factor
    M max_m k_m / Σ_m k_m is reported beside the computed (M K B) and real (Σ n_m)
    examples.
  * pfllib_eval: all 20 clients' test sets through the global model. library:
    `evaluation.make_evaluate` on test arrays padded as train.py pads them (every client
    to the largest, in chunks of `eval_batch_size`); torch: a per-client loop under
    `torch.no_grad()` in batches of the same size.
  * steps:<fedavg|mtsl|splitfed_v2>:<B>: M = 20 clients with equal data, the same CNN at
    batch B; FedAvg and SplitFed v2 rounds of 5 local steps, MTSL steps (U-shaped cut:
    the first convolution block and the head on the clients).

Columns: client examples trained (evaluated) per second of each, their ratio, the
library's seconds per call and compile time, and computed / real examples.

  python benchmarks/bench_rounds.py --check      # the library and torch compute the same
  python benchmarks/bench_rounds.py --json benchmarks/results_rounds_cpu.json
  python benchmarks/bench_rounds.py --rows=pfllib_round --examples=3000 --repeats=1
  python benchmarks/bench_rounds.py --from_json benchmarks/results_rounds_cpu.json
"""

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from configs import pfllib_mnist
from mtsl_jax import algorithms, data, evaluation, loop
from mtsl_jax.algorithms import epoch_lanes, federated, local_training, splitfed
from mtsl_jax.data import partition

import bench_step  # benchmarks/ is on sys.path when this file runs as a script
from bench_step import interleaved_seconds, machine_info

try:
  import torch
  import torch_fl
  import torch_split
except ImportError:  # torch is a benchmark-only, optional dependency
  torch = None

PFLLIB_EXAMPLES, PFLLIB_CLIENTS = 70_000, 20  # MNIST's train and test sets pooled
DIRICHLET_ALPHA, TRAIN_FRACTION = 0.1, 0.75
MIN_EXAMPLES = 40  # PFLlib's least_samples: batch_size / (1 - train_ratio)
LOCAL_STEPS = 5  # the steps rows' FedAvg and SplitFed rounds
STEP_ALGORITHMS = ("fedavg", "mtsl", "splitfed_v2")
DEFAULT_ROWS = ",".join(["pfllib_round", "pfllib_eval"] + [
    f"steps:{a}:{b}" for b in (10, 32) for a in STEP_ALGORITHMS])


def make_config(algorithm: str, num_clients: int, batch: int, local_epochs: int = 0):
  """PFLlib's MNIST config (`configs/pfllib_mnist.py`) for `algorithm`.

  Args:
    algorithm: 'fedavg', 'mtsl' or 'splitfed_v2'.
    num_clients: M.
    batch: B.
    local_epochs: E > 0 for rounds of local epochs; 0 for rounds of LOCAL_STEPS steps.

  Returns:
    The config. The split methods take SGD at the clients' learning rate on the server
    side too (FedAvg's server SGD at rate 1 is the plain average).
  """
  config = pfllib_mnist.get_config()
  config.algorithm = algorithm
  config.data.num_clients = num_clients
  config.batch_size = batch
  config.fl.local_epochs = local_epochs
  config.fl.local_steps = LOCAL_STEPS
  if algorithm != "fedavg":
    config.server_optimizer.learning_rate = config.client_optimizer.learning_rate
  return config


def pfllib_counts(examples: int = PFLLIB_EXAMPLES, num_clients: int = PFLLIB_CLIENTS,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Each client's train and test example counts, as PFLlib's MNIST partition makes them.

  Random labels (uniform over 10 classes, from `seed`) split by `partition_dirichlet` at
  alpha 0.1, then each client's examples split 75% / 25% (floor for train, as sklearn's
  train_test_split(train_size=0.75) that PFLlib calls).

  Args:
    examples: examples before the split (70,000: MNIST's train and test sets).
    num_clients: M.
    seed: the draw's seed.

  Returns:
    (train counts [M], test counts [M]), int64.
  """
  labels = partition.derive_rng(seed, 0).integers(0, 10, examples)
  parts = partition.partition_dirichlet(labels, num_clients, DIRICHLET_ALPHA, MIN_EXAMPLES,
                                        partition.derive_rng(seed, 1))
  sizes = np.array([p.shape[0] for p in parts], np.int64)
  train = np.floor(TRAIN_FRACTION * sizes).astype(np.int64)
  return train, sizes - train


def random_federation(train_counts, test_counts, seed: int = 0) -> data.Federation:
  """Random inputs of MNIST's shape and random labels, with these per-client counts."""
  rng = np.random.default_rng(seed)
  shape = bench_step.INPUT_SHAPE

  def arrays(counts):
    return ([rng.standard_normal((int(n),) + shape, dtype=np.float32) for n in counts],
            [rng.integers(0, 10, int(n)).astype(np.int32) for n in counts])

  (train_x, train_y), (test_x, test_y) = arrays(train_counts), arrays(test_counts)
  return data.Federation(tuple(train_x), tuple(train_y), tuple(test_x), tuple(test_y),
                         np.full(len(train_x), 10, np.int32), shape, "random, PFLlib-like")


def waste_factor(train_counts, batch: int, epochs: int = 1) -> float:
  """M max_m k_m / Σ_m k_m: client steps a vmapped round of local epochs computes per
  step a client takes (k_m = ceil(n_m / B) E, `local_training.epoch_steps`)."""
  k = local_training.epoch_steps(train_counts, batch, epochs)
  return float(len(k) * k.max() / k.sum())


def library_evaluation(algorithm, federation: data.Federation, eval_batch_size: int,
                       before: bool = False):
  """The library's evaluation as train.py sets it up (`_place`: `evaluation.evaluator`).

  Args:
    algorithm: the built Algorithm (its `logits` and label spaces).
    federation: the clients' data.
    eval_batch_size: `config.eval_batch_size`, examples per client per chunk.
    before: the evaluation before issue #18 instead: every client padded to the largest,
      chunks of `eval_batch_size` (build `algorithm` with `conv_impl='patches'` for its
      convolutions of then).

  Returns:
    (`evaluate(state) -> raw sums`, its EvalLayout).
  """
  _, test_np = data.to_host(federation)
  if not before:
    return evaluation.evaluator(algorithm, jax.eval_shape(algorithm.init_state), test_np,
                                eval_batch_size)
  layout = evaluation.plan_layout(test_np.counts, eval_batch_size, group=False)
  test = jax.device_put(evaluation.arrange(np.asarray(test_np.x), test_np.y, test_np.counts,
                                           layout))
  evaluate = evaluation.make_evaluate(algorithm.logits, algorithm.num_classes_M, layout)
  return (lambda state: evaluate(state, test)), layout


@contextlib.contextmanager
def _lanes_off():
  """Algorithms built inside run local epochs in lock-step (the library before #18)."""
  plan_lanes = epoch_lanes.plan_lanes
  epoch_lanes.plan_lanes = lambda *args, **kwargs: None
  try:
    yield
  finally:
    epoch_lanes.plan_lanes = plan_lanes


def _torch_device() -> str:
  # As bench_step's torch loop: CUDA when JAX runs on a GPU and torch sees one.
  gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  if not gpu:
    torch.set_num_threads(os.cpu_count())
  return "cuda" if gpu else "cpu"


def _timed(row: dict, fns: dict, samples: dict, repeats: int) -> dict:
  """Times `fns` interleaved; fills samples/s per column, the ratio and library s/call."""
  seconds = interleaved_seconds(fns, repeats)
  for name, sec in seconds.items():
    row[f"{name}_s"] = sec
    row[f"{name}_samples_per_s"] = samples[name] / sec
  for other in ("torch", "before"):
    if other in seconds:
      row[f"library_over_{other}"] = seconds[other] / seconds["library"] * (
          samples["library"] / samples[other])
  return row


def measure_round(args) -> dict:
  """The pfllib_round row: one FedAvg round of one local epoch, library and torch."""
  train_counts, test_counts = pfllib_counts(args.examples, args.clients, args.seed)
  federation = random_federation(train_counts, test_counts, args.seed)
  config = make_config("fedavg", args.clients, args.batch, local_epochs=1)
  library = bench_step.VmappedRunner(config, federation, 1, args.memory_margin_gib)
  # Before issue #18: every client in lock-step over the largest client's steps.
  with _lanes_off():
    lockstep = bench_step.VmappedRunner(config, federation, 1, args.memory_margin_gib)
  k = local_training.epoch_steps(train_counts, args.batch, 1)
  lanes = epoch_lanes.plan_lanes(k)
  computed = (lanes.num_lanes * lanes.num_steps if lanes else args.clients * k.max())
  real = int(train_counts.sum())
  row = dict(row="pfllib_round", clients=args.clients, batch=args.batch,
             train_counts=train_counts.tolist(), test_counts=test_counts.tolist(),
             steps_per_client=k.tolist(), max_steps=int(k.max()), real_examples=real,
             lanes=lanes.num_lanes if lanes else None,
             lane_steps=lanes.num_steps if lanes else None,
             computed_examples=int(computed * args.batch),
             waste_factor=float(computed / k.sum()),
             before_computed_examples=int(args.clients * k.max() * args.batch),
             unit="round",
             compile_s=library.compile_s, xla_memory_gib=library.memory_gib)
  fns, samples = ({"library": library, "before": lockstep},
                  {"library": real, "before": real, "torch": real})
  if torch is not None:
    device = _torch_device()
    sim = torch_fl.TorchFedAvg(args.clients, config.client_optimizer.learning_rate, device)
    train = torch_fl.client_tensors(federation.train_x, federation.train_y, device)
    weights = torch_fl.renormalized_weights(train_counts)
    fns["torch"] = lambda: sim.round(
        train, torch_fl.epoch_batches(train_counts, args.batch, device=device), weights)
    fns["torch"]()  # warm up
  return _timed(row, fns, samples, args.repeats)


def measure_eval(args) -> dict:
  """The pfllib_eval row: every client's test set through the global model."""
  train_counts, test_counts = pfllib_counts(args.examples, args.clients, args.seed)
  federation = random_federation(train_counts, test_counts, args.seed)
  config = make_config("fedavg", args.clients, args.batch, local_epochs=1)
  algorithm = algorithms.build_algorithm(config, federation)
  state = jax.jit(algorithm.init_state)()
  evaluate, layout = library_evaluation(algorithm, federation, config.eval_batch_size)
  t0 = time.perf_counter()  # 'compile s' here: the compilation and one evaluation
  jax.block_until_ready(evaluate(state))
  compile_s = time.perf_counter() - t0
  config.model.conv_impl = "patches"  # the CPU's formulation before issue #18
  old = algorithms.build_algorithm(config, federation)
  evaluate_before, before = library_evaluation(old, federation, config.eval_batch_size,
                                               before=True)
  jax.block_until_ready(evaluate_before(state))
  real = int(test_counts.sum())
  row = dict(row="pfllib_eval", clients=args.clients,
             groups=[[len(g.clients or ()) or args.clients, g.length, g.chunk]
                     for g in layout.groups],
             test_counts=test_counts.tolist(), real_examples=real,
             computed_examples=layout.computed_rows,
             waste_factor=layout.computed_rows / real,
             before_computed_examples=before.computed_rows, unit="evaluation",
             compile_s=compile_s)
  chunk = config.eval_batch_size
  fns = {"library": lambda: jax.block_until_ready(evaluate(state)),
         "before": lambda: jax.block_until_ready(evaluate_before(state))}
  if torch is not None:
    device = _torch_device()
    model = torch_fl.make_model().to(device)
    tests = torch_fl.client_tensors(federation.test_x, federation.test_y, device)
    fns["torch"] = lambda: torch_fl.evaluate(model, tests, chunk)
    fns["torch"]()
  return _timed(row, fns, {"library": real, "before": real, "torch": real}, args.repeats)


def measure_steps(algorithm: str, batch: int, args) -> dict:
  """A steps:<algorithm>:<B> row: M clients with equal data, rounds (or MTSL steps)."""
  num_clients = args.clients
  federation = bench_step.random_federation(num_clients,
                                            bench_step.examples_per_client(num_clients))
  config = make_config(algorithm, num_clients, batch)
  local = 1 if algorithm == "mtsl" else config.fl.local_steps  # client steps per step
  calls = max(1, args.steps // local)  # library steps (rounds) per timed call
  library = bench_step.VmappedRunner(config, federation, calls, args.memory_margin_gib)
  samples = calls * local * num_clients * batch
  row = dict(row=f"steps:{algorithm}:{batch}", clients=num_clients, batch=batch,
             local_steps=local, steps_per_call=calls, real_examples=samples,
             computed_examples=samples, waste_factor=1.0,
             unit="round" if local > 1 else "step", compile_s=library.compile_s,
             xla_memory_gib=library.memory_gib)
  fns = {"library": library}
  if torch is not None:
    device = _torch_device()
    lr = config.client_optimizer.learning_rate
    train = torch_fl.client_tensors(federation.train_x, federation.train_y, device)
    counts = federation.train_counts
    weights = torch_fl.renormalized_weights(counts)
    draw = lambda: torch_fl.drawn_batches(counts, local, batch, device)
    if algorithm == "fedavg":
      sim = torch_fl.TorchFedAvg(num_clients, lr, device)
      one = lambda: sim.round(train, draw(), weights)
    elif algorithm == "mtsl":
      sim = torch_split.TorchMTSL("cnn", num_clients, lr, lr, device, padding="valid")
      one = lambda: sim.step([(x[idx], y[idx]) for (x, y), (idx,) in zip(train, draw())])
    else:
      sim = torch_fl.TorchSplitFedV2(num_clients, lr, lr, device)
      one = lambda: sim.round(train, draw(), torch.randperm(num_clients), weights)
    fns["torch"] = lambda: [one() for _ in range(calls)]
    fns["torch"]()
  return _timed(row, fns, {"library": samples, "torch": samples}, args.repeats)


def measure_row(name: str, args) -> dict:
  """One row, in this process, with the machine's matmul rate for reference."""
  if name == "pfllib_round":
    row = measure_round(args)
  elif name == "pfllib_eval":
    row = measure_eval(args)
  else:
    _, algorithm, batch = name.split(":")
    row = measure_steps(algorithm, int(batch), args)
  row["library_s_per_unit"] = row["library_s"] / row.get("steps_per_call", 1)
  return row


# ---- the check -----------------------------------------------------------------------------


def _run_once(algorithm, state, train_data):
  """One step of the algorithm through the runner train.py uses (state kept)."""
  runner = loop.make_multi_step(algorithm.step, donate=False)
  state, summary = runner(state, train_data, 1)
  return state, np.asarray(summary["mean"]["task_loss"])


def _module_diff(a, b) -> float:
  """Largest absolute difference between the parameters of two lists of torch modules."""
  with torch.no_grad():
    return max(float((p - q).abs().max()) for ma, mb in zip(a, b)
               for p, q in zip(ma.parameters(), mb.parameters()))


def _change(new, old) -> float:
  """The largest parameter change of a step: the scale the differences are read against."""
  return max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)))


def _batches_as_data(x, y):
  """[M, K, B, ...] drawn batches -> per-client tensors of K B examples and K index runs."""
  num_steps, batch = y.shape[1], y.shape[2]
  x, y = np.asarray(x), np.asarray(y)
  tensors = torch_fl.client_tensors(x.reshape((-1, num_steps * batch) + x.shape[3:]),
                                    y.reshape(-1, num_steps * batch))
  steps = [torch.arange(k * batch, (k + 1) * batch) for k in range(num_steps)]
  return tensors, [steps] * y.shape[0]


def check_round(federation: data.Federation, batch: int) -> dict:
  """pfllib_round and pfllib_eval: the library's epoch round against TorchFedAvg's."""
  counts = federation.train_counts
  config = make_config("fedavg", federation.num_clients, batch, local_epochs=1)
  algorithm = algorithms.build_algorithm(config, federation)
  train_data, _ = data.to_device(federation)
  state0 = jax.jit(algorithm.init_state)()
  num_steps = federated.local_steps(config, federation)
  plan = jax.device_get(federated.round_epochs(state0, train_data, num_steps, batch, 1))
  assert (plan.step_mask.sum(axis=1) == local_training.epoch_steps(counts, batch, 1)).all()
  state1, want_losses = _run_once(algorithm, state0, train_data)
  # Client m's planned steps: the examples its mask marks (the last batch smaller).
  batches = [[torch.from_numpy(plan.index[m, k][plan.example_mask[m, k]].astype(np.int64))
              for k in range(num_steps) if plan.step_mask[m, k]]
             for m in range(federation.num_clients)]
  lr = config.client_optimizer.learning_rate
  sim = torch_fl.TorchFedAvg(federation.num_clients, lr)
  torch_split.load_stack(sim.global_model, state0.server.params)
  losses = sim.round(torch_fl.client_tensors(federation.train_x, federation.train_y), batches,
                     torch_fl.renormalized_weights(counts))
  want = torch_fl.make_model()
  torch_split.load_stack(want, state1.server.params)
  report = {"pfllib_round": {"params": _module_diff([sim.global_model], [want]),
                             "losses": float(np.abs(np.asarray(losses) - want_losses).max()),
                             "update": _change(state1.server.params, state0.server.params)}}
  # The evaluation of the initial model, both ways.
  evaluate, _ = library_evaluation(algorithm, federation, config.eval_batch_size)
  raw = jax.device_get(evaluate(state0))
  chunk = config.eval_batch_size
  model = torch_fl.make_model()
  torch_split.load_stack(model, state0.server.params)
  correct, loss_sum = torch_fl.evaluate(
      model, torch_fl.client_tensors(federation.test_x, federation.test_y), chunk)
  report["pfllib_eval"] = {"correct": float(np.abs(raw["correct"] - correct).max()),
                           "loss_sum": float(np.abs(raw["loss_sum"] - loss_sum).max())}
  return report


def check_steps(federation: data.Federation, algorithm_name: str, batch: int,
                local_steps: int = 2) -> dict:
  """A steps row's check: one library round (MTSL step) against the torch loop's."""
  num_clients, counts = federation.num_clients, federation.train_counts
  config = make_config(algorithm_name, num_clients, batch)
  config.fl.local_steps = local_steps
  lr = config.client_optimizer.learning_rate
  algorithm = algorithms.build_algorithm(config, federation)
  train_data, _ = data.to_device(federation)
  state0 = jax.jit(algorithm.init_state)()
  state1, want_losses = _run_once(algorithm, state0, train_data)
  weights = torch_fl.renormalized_weights(counts)
  if algorithm_name == "fedavg":
    tensors, steps = _batches_as_data(*federated.draw_round_batches(
        state0, train_data, local_steps, batch))
    sim, want = torch_fl.TorchFedAvg(num_clients, lr), torch_fl.make_model()
    torch_split.load_stack(sim.global_model, state0.server.params)
    losses = sim.round(tensors, steps, weights)
    torch_split.load_stack(want, state1.server.params)
    got, want = [sim.global_model], [want]
  elif algorithm_name == "mtsl":
    x, y = data.sample_batches(train_data, jax.random.fold_in(state0.rng, state0.step), batch)
    tensors, _ = _batches_as_data(np.asarray(x)[:, None], np.asarray(y)[:, None])
    sim, ref = (torch_split.TorchMTSL("cnn", num_clients, lr, lr, padding="valid")
                for _ in range(2))
    torch_split.load_jax_params(sim, state0.server.params, state0.clients.params)
    losses = sim.step(tensors)
    torch_split.load_jax_params(ref, state1.server.params, state1.clients.params)
    got, want = ([s.server] + s.bottoms + s.tops for s in (sim, ref))
  else:
    # SplitFed's split step j of round 0 draws every client's batch as MTSL's step j.
    draws = [data.sample_batches(train_data, jax.random.fold_in(state0.rng, j), batch)
             for j in range(local_steps)]
    tensors, steps = _batches_as_data(np.stack([d[0] for d in draws], 1),
                                      np.stack([d[1] for d in draws], 1))
    order = np.asarray(jax.random.permutation(
        splitfed._round_key(state0, splitfed._ORDER_STREAM), num_clients))  # pylint: disable=protected-access
    sim, ref = (torch_fl.TorchSplitFedV2(num_clients, lr, lr) for _ in range(2))
    for s, state in ((sim, state0), (ref, state1)):
      torch_split.load_stack(s.server, state.server.params)
      torch_split.load_stack(s.bottom, state.client_params["bottom"])
      torch_split.load_stack(s.top, state.client_params["top"])
    losses = sim.round(tensors, steps, order, weights)
    got, want = ([s.server, s.bottom, s.top] for s in (sim, ref))
  # Every method's trained parameters: FedAvg's global model; MTSL's and SplitFed's sides.
  parts = lambda s: (s.server.params, s.clients.params if algorithm_name == "mtsl" else
                     getattr(s, "client_params", ()))
  return {"params": _module_diff(got, want),
          "losses": float(np.abs(np.asarray(losses) - want_losses).max()),
          "update": _change(parts(state1), parts(state0))}


def check(counts=(7, 23, 40), test_counts=(3, 8, 13), batch: int = 10,
          step_batches=(10, 32), atol: float = 1e-4) -> dict:
  """Every row's library computation against its torch loop, on a tiny federation.

  From the same initial parameters and the same examples in the same order (the
  library's EpochPlan, its drawn minibatches and SplitFed's client order fed to torch),
  both must give the same new global, client and server parameters and the same
  per-client losses, to `atol`; the evaluation the same correct counts and loss sums.
  Each row also reports 'update', the step's largest parameter change, for scale (not
  checked). Float rounding can decide a max-pool window whose two largest values lie
  within it: the two frameworks then route that window's gradient to different inputs.
  Here one window of SplitFed v2's batch-10 check is such (values 9e-8 apart, conv
  outputs 1e-6 apart between the frameworks), which makes that row's parameters differ
  by 3e-5 where the others differ by 1e-8; a float64 torch agrees with the float32 one
  there, and a hand-written JAX SplitFed v2 with the library's.

  Args:
    counts: each client's train examples (7, 23, 40 at batch 10: 1, 3 and 4 steps, the
      last batch of each partial).
    test_counts: each client's test examples.
    batch: the round's batch size.
    step_batches: the steps rows' batch sizes to check.
    atol: largest absolute difference allowed.

  Returns:
    {row: {quantity: largest absolute difference}}.

  Raises:
    AssertionError: when a difference exceeds `atol`.
  """
  federation = random_federation(counts, test_counts)
  report = check_round(federation, batch)
  for algorithm in STEP_ALGORITHMS:
    for b in step_batches:
      report[f"steps:{algorithm}:{b}"] = check_steps(federation, algorithm, b)
  for row, diffs in report.items():
    for name, diff in diffs.items():
      assert name == "update" or diff <= atol, f"{row}: {name} differs by {diff:.2e}"
  return report


# ---- rows, JSON and tables -----------------------------------------------------------------


def run_rows(args) -> dict:
  """Runs every row in its own subprocess; returns the results with the machine info."""
  train_counts, test_counts = pfllib_counts(args.examples, args.clients, args.seed)
  results = dict(machine=machine_info(), command=" ".join(sys.argv), rows=[],
                 torch_version=torch.__version__ if torch is not None else None,
                 federation=dict(examples=args.examples, clients=args.clients, seed=args.seed,
                                 alpha=DIRICHLET_ALPHA, batch=args.batch,
                                 train_counts=train_counts.tolist(),
                                 test_counts=test_counts.tolist(),
                                 waste_factor=waste_factor(train_counts, args.batch)),
                 load_average_at_start=list(os.getloadavg()))
  print(federation_line(results["federation"]), flush=True)
  print(TABLE_HEADER, flush=True)
  env = dict(os.environ)
  if args.omp_wait_policy:  # see bench_step.py: PASSIVE helps PyTorch on a shared machine
    env["OMP_WAIT_POLICY"] = args.omp_wait_policy
  for name in filter(None, args.rows.split(",")):
    cmd = [sys.executable, __file__, f"--one_row={name}"] + [
        f"--{k}={getattr(args, k)}" for k in ("examples", "clients", "seed", "batch", "steps",
                                               "repeats", "memory_margin_gib")]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
      row = dict(row=name, error=f"exit {proc.returncode}: "
                 f"{(proc.stderr.strip().splitlines() or [''])[-1][-300:]}")
    else:
      row = json.loads(lines[-1])
    row["wall_s"] = time.time() - t0
    results["rows"].append(row)
    print(format_row(row), flush=True)
    bench_step.save_json(results, args.json)
  results["machine"]["load_average_at_end"] = list(os.getloadavg())
  bench_step.save_json(results, args.json)
  return results


def federation_line(fed: dict) -> str:
  """The partition's per-client counts, in one line."""
  return (f"Federation: {fed['examples']:,} examples, {fed['clients']} clients, "
          f"Dirichlet({fed['alpha']}), seed {fed['seed']}; train per client "
          f"{fed['train_counts']} (Σ {sum(fed['train_counts']):,}); test per client "
          f"{fed['test_counts']} (Σ {sum(fed['test_counts']):,}); a round of one epoch at "
          f"batch {fed['batch']}: waste factor M max k_m / Σ k_m = {fed['waste_factor']:.2f}")


TABLE_HEADER = (
    "| row | library samples/s | torch samples/s | library / torch | before #18 samples/s "
    "| library / before | library s per round (step, evaluation) | computed / real examples "
    "(before) | library compile s |\n"
    "|---|---|---|---|---|---|---|---|---|")


def format_row(row: dict) -> str:
  """One markdown table row (see TABLE_HEADER)."""
  if "error" in row:
    return f"| {row['row']} | failed: {row['error']} | | | | | | | |"
  fmt = lambda key, spec, suffix="": ("–" if row.get(key) is None
                                      else f"{row[key]:{spec}}{suffix}")
  before = row.get("before_computed_examples")
  before_text = f"; before {before:,.0f}" if before else ""
  return (f"| {row['row']} | {fmt('library_samples_per_s', ',.0f')} | "
          f"{fmt('torch_samples_per_s', ',.0f')} | "
          f"**{fmt('library_over_torch', '.2f', 'x')}** | "
          f"{fmt('before_samples_per_s', ',.0f')} | {fmt('library_over_before', '.2f', 'x')} | "
          f"{row['library_s_per_unit']:.3f} ({row['unit']}) | {row['computed_examples']:,} / "
          f"{row['real_examples']:,} ({row['waste_factor']:.2f}x{before_text}) | "
          f"{row['compile_s']:.1f} |")


def markdown(results: dict) -> str:
  """The machine, the command, the federation and the table."""
  m = results["machine"]
  lines = [f"Machine: {m['processor']}, {m['cores']} cores; JAX {m['jax']} ({m['backend']}); "
           f"PyTorch {results['torch_version'] or 'not installed'}; {m['date']}. Load "
           f"average before: {', '.join(f'{x:.2f}' for x in results['load_average_at_start'])};"
           f" after: {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}.", "",
           f"```\n{results['command']}\n```", "", federation_line(results["federation"]), "",
           TABLE_HEADER]
  return "\n".join(lines + [format_row(r) for r in results["rows"]]) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default=DEFAULT_ROWS,
                      help="pfllib_round, pfllib_eval, steps:<fedavg|mtsl|splitfed_v2>:<B>")
  parser.add_argument("--examples", type=int, default=PFLLIB_EXAMPLES,
                      help="examples of the PFLlib-like federation (fewer: a quick look)")
  parser.add_argument("--clients", type=int, default=PFLLIB_CLIENTS)
  parser.add_argument("--seed", type=int, default=0, help="the partition's and data's seed")
  parser.add_argument("--batch", type=int, default=10, help="the round's batch size")
  parser.add_argument("--steps", type=int, default=5,
                      help="steps rows: client steps per timed call (rounds of 5 for "
                           "FedAvg and SplitFed)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per column")
  parser.add_argument("--memory_margin_gib", type=float, default=1.5)
  parser.add_argument("--omp_wait_policy", default="", help="as bench_step.py's")
  parser.add_argument("--json", default="", help="write the results here (after every row)")
  parser.add_argument("--from_json", default="", help="only print the table of this file")
  parser.add_argument("--check", action="store_true",
                      help="check that the library and the torch loops compute the same")
  parser.add_argument("--one_row", default="", help=argparse.SUPPRESS)  # internal
  args = parser.parse_args()

  if args.check:
    if torch is None:
      sys.exit("the check compares against PyTorch, which is not installed")
    print(json.dumps(check(), indent=1))
  elif args.one_row:
    print(json.dumps(measure_row(args.one_row, args)))
  elif args.from_json:
    print(markdown(json.loads(pathlib.Path(args.from_json).read_text())))
  else:
    if torch is None:
      print("torch is not installed: the torch column is skipped")
    print("\n" + markdown(run_rows(args)))


if __name__ == "__main__":
  main()
