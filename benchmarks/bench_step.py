"""Throughput, compile time and memory of the MTSL step against per-client loops.

For each model (the MNIST MLP 784-200-200-10 and the CNN conv5x5-32/pool/conv5x5-64/pool/
dense-512/dense-10, both cut U-shaped: one block on each client side) and each number of
clients M, one row measures, interleaved in the same process (so that a shared machine's
load changes hit every column alike):

  * vmapped: the library's jitted multi-step runner (clients vmapped, several steps per
    call, data on the device, state donated): what `train.py` runs;
  * jax loop: a jit-per-client simulator built from the same JAX functions: per client and
    step, jitted calls for the batch draw, the client bottom forward, the server forward,
    the client top's loss and update, the server backward (accumulating its gradient) and
    the client bottom backward and update, with the smashed data, activations and cut
    gradients passed between the calls as a simulator passes its messages; one jitted
    server update per step;
  * torch loop: the same split step in plain PyTorch, looping over per-client modules and
    optimizers (`torch_split.py`; skipped with a note when torch is not installed);
  * fedavg: one FedAvg round (5 local steps per client, vmapped), per local step.

Reported per row: client samples/s and steps/s of each, the ratios vmapped / jax loop and
vmapped / torch loop, the vmapped compile time, its achieved FLOP/s (XLA's cost analysis
of one step over its time) against a dense 2048² f32 matmul timed in the same process
(the MLP's also against its roofline, `roofline.py`: min(matmul FLOP/s, STREAM triad
bandwidth x the step's hand-counted FLOPs per byte), both measured in the row's process),
XLA's memory analysis of the runner (arguments + temporaries) and the process's peak RSS.
Every row runs in its own subprocess, so its peak RSS is its own.

  python benchmarks/bench_step.py --check          # the three step implementations agree
  python benchmarks/bench_step.py --json benchmarks/results_cpu.json \\
      --results_md benchmarks/RESULTS.md           # every table of RESULTS.md, ~40 min
  python benchmarks/bench_step.py --rows=mlp:100 --steps=5   # a quick look
"""

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from mtsl_jax import algorithms, config_base, data, loop, models, sharding, split_gradients
from mtsl_jax import split_model, task_losses

import roofline  # benchmarks/ is on sys.path when this file runs as a script

try:
  import torch
  import torch_split
except ImportError:  # torch is a benchmark-only, optional dependency
  torch = None

# MNIST's 60,000 train examples shared among the clients, at most 256 each: the number
# only affects memory (batches are drawn with replacement), and at M = 10,000 it keeps the
# device data at 6 examples per client, as MNIST would.
MNIST_TRAIN, MAX_EXAMPLES_PER_CLIENT = 60_000, 256
INPUT_SHAPE = (28, 28, 1)
LR = 0.05
DEFAULT_ROWS = ("mlp:1,mlp:10,mlp:100,mlp:300,mlp:1000,mlp:3000,mlp:1000:auto:2,"
                "cnn:1,cnn:10,cnn:100,cnn:1:xla,cnn:10:auto:2,mlp:10000")
RESULTS_BEGIN, RESULTS_END = "<!-- bench_step:begin -->", "<!-- bench_step:end -->"


def make_config(model: str, num_clients: int, batch: int, algorithm: str = "mtsl",
                conv_impl: str = "auto", devices: int = 1):
  """The benchmark's experiment config: SGD on both sides, uniform task weights."""
  config = config_base.base_config()
  config.algorithm = algorithm
  config.data.num_clients = num_clients
  config.model.name = model
  config.model.hidden_sizes = (200, 200)
  config.model.conv_impl = conv_impl
  config.batch_size = batch
  config.fl.local_steps = 5
  config.parallel.client_devices = devices
  config.server_optimizer.learning_rate = 1.0 if algorithm == "fedavg" else LR
  config.client_optimizer.learning_rate = LR
  return config


def random_federation(num_clients: int, examples: int, seed: int = 0) -> data.Federation:
  """Random inputs and labels of MNIST's shape (the values do not affect speed)."""
  rng = np.random.default_rng(seed)
  xs = tuple(rng.normal(size=(examples,) + INPUT_SHAPE).astype(np.float32)
             for _ in range(num_clients))
  ys = tuple(rng.integers(0, 10, examples).astype(np.int32) for _ in range(num_clients))
  return data.Federation(xs, ys, xs, ys, np.full(num_clients, 10, np.int32), INPUT_SHAPE,
                         "random")


def matmul_flops_per_second(n: int = 0, repeats: int = 5) -> float:
  """Best-of-`repeats` FLOP/s of one jitted dense f32 [n, n] @ [n, n].

  Args:
    n: matrix side; 0 for 2048 on a CPU and 8192 on an accelerator (where a 2048² product
      is too short to reach the device's rate). At JAX's default precision, as the model's
      own products run (on NVIDIA GPUs that allows TF32).
    repeats: timed products.
  """
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n ** 3 / min(times)


def model_flops_per_example(model_config) -> int:
  """FLOPs of one example's forward and backward pass through the model, counted by hand.

  Two FLOPs per multiply-add of every dense and convolution layer: its forward, its weight
  gradient, and its input gradient (except the first layer's, which nothing needs).
  Elementwise work is not counted. This is the FLOP count on every backend alike: XLA's
  cost analysis counts the CPU's dots and convolutions, but not all of the library calls
  (cuBLAS, cuDNN) of a GPU program. On a CPU the two agree to ~3% (tests/test_bench_step.py).

  Args:
    model_config: the `model` config section ('mlp' on 28x28x1 inputs, or 'cnn': 5x5
      'SAME' convolutions, each followed by a 2x2 pool, then dense layers).

  Returns:
    FLOPs per example.
  """
  h, w, c = INPUT_SHAPE
  macs = []  # multiply-adds of each layer, in order
  if model_config.name == "mlp":
    sizes = (h * w * c,) + tuple(model_config.hidden_sizes) + (10,)
    macs = [a * b for a, b in zip(sizes, sizes[1:])]
  elif model_config.name == "cnn":
    for features in model_config.cnn_features:
      macs.append(h * w * 25 * c * features)
      h, w, c = h // 2, w // 2, features
    macs += [h * w * c * model_config.cnn_dense, model_config.cnn_dense * 10]
  else:
    raise ValueError(f"no FLOP count for model {model_config.name!r}")
  return 2 * (2 * sum(macs) + sum(macs[1:]))


def interleaved_seconds(fns: dict, repeats: int) -> dict:
  """Median seconds of each blocking callable, timed in turns (A, B, C, A, B, C, ...)."""
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return {k: float(np.median(v)) for k, v in times.items()}


class VmappedRunner:
  """The library's runner on one config; `__call__` runs `steps` steps and blocks.

  Attributes:
    compile_s: seconds to trace and compile the runner (one-device program).
    flops: XLA's cost analysis of one step, in FLOPs.
    memory_gib: XLA's memory analysis of the runner: arguments plus temporaries (the
      state is donated, so the outputs alias the arguments).
    init_memory_gib: the same for the state's initialization: output plus temporaries.

  Raises:
    MemoryError: when the runner would not fit in the memory free now.
  """

  def __init__(self, config, federation, steps: int, memory_margin_gib: float = 1.0):
    algorithm = algorithms.build_algorithm(config, federation)
    self._data, _ = data.to_device(federation)
    self._run = loop.make_multi_step(algorithm.step)
    abstract = jax.eval_shape(algorithm.init_state)
    self._n = jnp.asarray(steps, jnp.int32)
    # FLOPs and memory of the one-device program (a sharded one reports one device's).
    cost = jax.jit(algorithm.step).lower(abstract, self._data).compile().cost_analysis()
    self.flops = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
    t0 = time.perf_counter()
    memory = self._run.lower(abstract, self._data, self._n).compile().memory_analysis()
    self.compile_s = time.perf_counter() - t0
    self.memory_gib = (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2 ** 30
    # The machine may be shared: rather than let the kernel's OOM killer pick a victim,
    # refuse a row that would not fit in what is free now. The initialization can need
    # more than the runner (vmapped random draws for all clients at once; RESULTS.md).
    init = jax.jit(algorithm.init_state).lower().compile().memory_analysis()
    self.init_memory_gib = (init.output_size_in_bytes + init.temp_size_in_bytes) / 2 ** 30
    need = max(self.memory_gib, self.init_memory_gib)
    if need + memory_margin_gib > available_gib():
      raise MemoryError(f"needs {need:.1f} GiB (XLA memory analysis: runner "
                        f"{self.memory_gib:.1f}, initialization {self.init_memory_gib:.1f}) "
                        f"+ {memory_margin_gib} GiB margin; {available_gib():.1f} GiB free")
    # As train.py places them: clients split over `parallel.client_devices`, if > 1.
    mesh = sharding.client_mesh(config.parallel.client_devices, federation.num_clients)
    shardings = sharding.state_shardings(abstract, mesh, federation.num_clients)
    self._state = jax.jit(algorithm.init_state, out_shardings=shardings)()
    if mesh is not None:
      self._data = sharding.shard_clients(self._data, mesh)
    self()  # warm up (compiles again if the placement differs from the abstract state's)

  def __call__(self):
    self._state, _ = self._run(self._state, self._data, self._n)
    jax.block_until_ready(self._state)

  @property
  def state(self):
    return self._state


class JaxClientLoop:
  """A jit-per-client MTSL simulator on the library's model functions (SGD both sides).

  Each call below is its own jitted program, called once per client per step, with the
  protocol's messages as its inputs and outputs. The backward calls take the `jax.vjp`
  closures of the forward calls (pytrees of residuals), so nothing is recomputed.
  Batches are drawn as `data.sample_batches` draws them (client m of step t from
  fold_in(fold_in(rng, t), m)), so one step equals the library's step (`--check`).
  """

  def __init__(self, config, federation, server_params, client_params, rng):
    model = split_model.make_split_model(config.model, config.split, 10)
    num_clients = federation.num_clients
    lr_s, lr_c = config.server_optimizer.learning_rate, config.client_optimizer.learning_rate
    weight, batch = 1.0 / num_clients, config.batch_size
    sgd = lambda lr: jax.jit(lambda p, g: jax.tree.map(lambda a, b: a - lr * b, p, g),
                             donate_argnums=0)

    @jax.jit
    def draw(x, y, key, m):
      idx = jax.random.randint(jax.random.fold_in(key, m), (batch,), 0, y.shape[0])
      return x[idx], y[idx]

    @jax.jit
    def bottom_forward(params, x):
      return jax.vjp(lambda p: model.bottom.apply(p, x), params)

    @jax.jit
    def server_forward(params, smashed):
      return jax.vjp(model.server.apply, params, smashed)

    @functools.partial(jax.jit, donate_argnums=0)
    def top_step(params, h, y):
      loss_fn = lambda p, h: task_losses.masked_cross_entropy(model.top.apply(p, h), y, 10)
      loss, (g_top, g_h) = jax.value_and_grad(loss_fn, argnums=(0, 1))(params, h)
      return loss, jax.tree.map(lambda p, g: p - lr_c * g, params, g_top), g_h

    @functools.partial(jax.jit, donate_argnums=0)
    def server_backward(acc, server_vjp, g_h):
      g_server, g_smashed = server_vjp(g_h)
      return jax.tree.map(lambda a, g: a + weight * g, acc, g_server), g_smashed

    @functools.partial(jax.jit, donate_argnums=0)
    def bottom_backward(params, bottom_vjp, g_smashed):
      (g_bottom,) = bottom_vjp(g_smashed)
      return jax.tree.map(lambda p, g: p - lr_c * g, params, g_bottom)

    self._calls = dict(draw=draw, bottom_forward=bottom_forward,
                       server_forward=server_forward, top_step=top_step,
                       server_backward=server_backward, bottom_backward=bottom_backward,
                       server_update=sgd(lr_s))
    self.server = jax.tree.map(jnp.copy, server_params)  # server_update donates it
    self.clients = [jax.tree.map(lambda a, m=m: a[m], client_params)
                    for m in range(num_clients)]
    self._data = [(jnp.asarray(x), jnp.asarray(y))
                  for x, y in zip(federation.train_x, federation.train_y)]
    self._rng, self._step = jnp.copy(rng), 0

  def step(self) -> list:
    """One MTSL step over all clients; returns the M losses (device scalars)."""
    c = self._calls
    key = jax.random.fold_in(self._rng, self._step)
    acc = jax.tree.map(jnp.zeros_like, self.server)
    losses = []
    for m, (x_all, y_all) in enumerate(self._data):
      x, y = c["draw"](x_all, y_all, key, m)
      smashed, bottom_vjp = c["bottom_forward"](self.clients[m]["bottom"], x)
      h, server_vjp = c["server_forward"](self.server, smashed)
      loss, top, g_h = c["top_step"](self.clients[m]["top"], h, y)
      acc, g_smashed = c["server_backward"](acc, server_vjp, g_h)
      bottom = c["bottom_backward"](self.clients[m]["bottom"], bottom_vjp, g_smashed)
      self.clients[m] = {"bottom": bottom, "top": top}
      losses.append(loss)
    self.server = c["server_update"](self.server, acc)
    self._step += 1
    return losses

  def __call__(self, steps: int = 1):
    for _ in range(steps):
      self.step()
    jax.block_until_ready(self.server)


class TorchClientLoop:
  """`torch_split.TorchMTSL` with its per-client data and batch draw (torch.randint)."""

  def __init__(self, model: str, federation, config):
    # On the device JAX runs on: CUDA when JAX runs on a GPU and torch sees one.
    self.device = ("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available()
                   else "cpu")
    if self.device == "cpu":
      torch.set_num_threads(os.cpu_count())
    self.sim = torch_split.TorchMTSL(model, federation.num_clients,
                                     config.server_optimizer.learning_rate,
                                     config.client_optimizer.learning_rate, self.device)
    self._data = [(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(self.device),
                   torch.from_numpy(y.astype(np.int64)).to(self.device))
                  for x, y in zip(federation.train_x, federation.train_y)]
    self._batch = config.batch_size

  def __call__(self, steps: int = 1):
    for _ in range(steps):
      batches = []
      for x, y in self._data:
        idx = torch.randint(0, y.shape[0], (self._batch,), device=self.device)
        batches.append((x[idx], y[idx]))
      self.sim.step(batches)  # returns the losses as host floats: the device is done


def available_gib() -> float:
  """Memory free for a row, GiB: the accelerator's free memory, or the host's MemAvailable.

  On a CPU, MemAvailable of /proc/meminfo (inf where there is none); on an accelerator,
  the device's byte limit less what is in use (XLA's allocator statistics).
  """
  stats = device_memory_stats()
  if stats:
    return (stats["bytes_limit"] - stats.get("bytes_in_use", 0)) / 2 ** 30
  try:
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) / 2 ** 20
  except OSError:
    pass
  return float("inf")


def device_memory_stats() -> dict:
  """The first device's allocator statistics on an accelerator; {} on a CPU."""
  if jax.default_backend() == "cpu":
    return {}
  return jax.devices()[0].memory_stats() or {}


def examples_per_client(num_clients: int) -> int:
  return min(MAX_EXAMPLES_PER_CLIENT, MNIST_TRAIN // num_clients)


def measure_row(model: str, num_clients: int, conv_impl: str, devices: int, args) -> dict:
  """Every column of one (model, M, conv_impl, client devices) row, in this process."""
  federation = random_federation(num_clients, examples_per_client(num_clients))
  config = make_config(model, num_clients, args.batch, conv_impl=conv_impl, devices=devices)
  # Steps per timed call of the runner: train.py runs `log_every` (100 by default) steps per
  # call. Each call of a jitted program allocates its temporaries afresh, and the first
  # touch of their pages costs time (page faults: ~0.1 s per call for the CNN at M = 10,
  # whose convolution patches are ~200 MB), which more steps per call amortize as train.py
  # does; the CNN's steps are slow, so it runs half as many per call as the MLP.
  steps = args.steps if model == "mlp" else max(2, args.steps // 2)
  steps = max(2, min(steps, steps * 1000 // num_clients))  # M = 10,000: seconds per step
  # The loops take ~M times longer per step than a vmapped step does at small M; fewer
  # steps per timed call keep every column's call at a comparable length.
  loop_steps = max(1, min(steps, round(steps * 10 / num_clients)))
  row = dict(model=model, clients=num_clients, conv_impl=conv_impl, devices=devices,
             backend=jax.default_backend(),
             resolved_conv_impl=(models.resolve_conv_impl(conv_impl) if model == "cnn" else ""),
             batch=args.batch, examples_per_client=examples_per_client(num_clients),
             vmapped_steps_per_call=steps, loop_steps_per_call=loop_steps,
             matmul_flops=matmul_flops_per_second())
  if model == "mlp":  # the MLP's roofline (roofline.py): memory bandwidth, measured here too
    row["stream_triad_bytes_per_s"] = roofline.stream_bandwidth()["triad"]
  vmapped = VmappedRunner(config, federation, steps, args.memory_margin_gib)
  row.update(compile_s=vmapped.compile_s, xla_flops_per_step=vmapped.flops,
             flops_per_step=model_flops_per_example(config.model) * num_clients * args.batch,
             xla_memory_gib=vmapped.memory_gib, xla_init_memory_gib=vmapped.init_memory_gib)
  fns, per_call = {"vmapped": vmapped}, {"vmapped": steps}
  # With the CPU split into several XLA devices the per-client loops of the same process
  # ran 1.5-3x slower than in a one-device process (measured at M = 10), which would
  # flatter the ratios: such rows time the runner alone.
  if devices == 1 and num_clients <= args.fedavg_max_clients:
    fed_steps = max(1, steps // 5)
    fns["fedavg"] = VmappedRunner(make_config(model, num_clients, args.batch, "fedavg",
                                              conv_impl, devices), federation, fed_steps)
    per_call["fedavg"] = fed_steps * config.fl.local_steps  # local steps
  if devices == 1 and num_clients <= args.loop_max_clients:
    state = vmapped.state
    jax_loop = JaxClientLoop(config, federation, state.server.params,
                             state.clients.params, state.rng)
    jax_loop()  # compile
    fns["jax_loop"] = lambda: jax_loop(loop_steps)
    per_call["jax_loop"] = loop_steps
    if torch is not None:
      torch_loop = TorchClientLoop(model, federation, config)
      torch_loop()  # warm up
      fns["torch_loop"] = lambda: torch_loop(loop_steps)
      per_call["torch_loop"] = loop_steps
  seconds = interleaved_seconds(fns, args.repeats)
  samples = num_clients * args.batch
  for name, sec in seconds.items():
    step_s = sec / per_call[name]
    row[f"{name}_s_per_step"] = step_s
    row[f"{name}_samples_per_s"] = samples / step_s
  row["gflops"] = row["flops_per_step"] / row["vmapped_s_per_step"] / 1e9
  row["matmul_fraction"] = row["gflops"] * 1e9 / row["matmul_flops"]
  if model == "mlp":
    row["roofline_flops"] = roofline.roofline_flops(
        row["matmul_flops"], row["stream_triad_bytes_per_s"], row["flops_per_step"],
        roofline.mtsl_mlp_step_bytes(num_clients, args.batch))
    row["roofline_fraction"] = row["gflops"] * 1e9 / row["roofline_flops"]
  for name in ("jax_loop", "torch_loop"):
    if name in seconds:
      row[f"vmapped_over_{name}"] = row[f"{name}_s_per_step"] / row["vmapped_s_per_step"]
  row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
  device_stats = device_memory_stats()
  if device_stats:  # on an accelerator the state lives in device memory
    row["peak_device_gib"] = device_stats.get("peak_bytes_in_use", 0) / 2 ** 30
  return row


def profile_step(model: str, num_clients: int, batch: int, repeats: int) -> dict:
  """Milliseconds of the parts of one vmapped MTSL step, each jitted alone, interleaved.

  The parts: the batch draw, the client bottoms' forward, their forward and backward
  (the per-client weight gradients), the server part's forward and backward on all
  clients' smashed data, the client tops' forward and backward, all gradients at once
  (`split_gradients.fused_gradients`), the whole step (plus both optimizer updates and the health
  metrics) and one step of the multi-step runner.

  Args:
    model: 'mlp' or 'cnn'.
    num_clients: M.
    batch: examples per client.
    repeats: timed calls per part.

  Returns:
    {part: milliseconds}.
  """
  federation = random_federation(num_clients, examples_per_client(num_clients))
  config = make_config(model, num_clients, batch)
  algorithm = algorithms.build_algorithm(config, federation)
  cut = split_model.make_split_model(config.model, config.split, 10)
  train_data, _ = data.to_device(federation)
  state = jax.jit(algorithm.init_state)()
  sp, cp = state.server.params, state.clients.params
  key = jax.random.PRNGKey(0)
  x, y = data.sample_batches(train_data, key, batch)
  smashed = jax.jit(cut.client_bottom)(cp["bottom"], x)
  h = jax.jit(cut.server_part)(sp, smashed)
  num_classes, weights = jnp.full((num_clients,), 10), jnp.full((num_clients,), 1 / num_clients)

  def backward(fn, *primals):
    """jit of fn's forward and backward (cotangent ones) at `primals`."""
    def go(*p):
      out, vjp = jax.vjp(fn, *p)
      return vjp(jnp.ones_like(out))
    return jax.jit(go), primals

  top_loss = lambda tp, h: jax.vmap(task_losses.masked_cross_entropy)(cut.client_top(tp, h), y,
                                                                 num_classes)
  steps = 10
  run, n = loop.make_multi_step(algorithm.step, donate=False), jnp.asarray(steps, jnp.int32)
  parts = {
      "batch draw (sample_batches)": (functools.partial(data.sample_batches,
                                                        batch_size=batch), (train_data, key)),
      "client bottoms: forward": (jax.jit(cut.client_bottom), (cp["bottom"], x)),
      "client bottoms: forward + backward": backward(
          lambda p: cut.client_bottom(p, x), cp["bottom"]),
      "server part: forward + backward": backward(cut.server_part, sp, smashed),
      "client tops: forward + backward (loss)": backward(top_loss, cp["top"], h),
      "all gradients (fused_gradients)": (jax.jit(functools.partial(
          split_gradients.fused_gradients, cut)), (sp, cp, x, y, num_classes, weights)),
      "whole step (+ sampling, updates, metrics)": (jax.jit(algorithm.step),
                                                    (state, train_data)),
  }
  fns = {name: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for name, (f, a) in
         parts.items()}
  fns["runner, per step"] = lambda: jax.block_until_ready(run(state, train_data, n))
  for fn in fns.values():
    fn()  # compile
  seconds = interleaved_seconds(fns, repeats)
  seconds["runner, per step"] /= steps
  return {name: 1e3 * sec for name, sec in seconds.items()}


def parse_rows(spec: str) -> list[tuple[str, int, str, int]]:
  """'mlp:100,cnn:10:xla,mlp:100:auto:2' -> (model, M, conv_impl, client devices) each."""
  rows = []
  for item in spec.split(","):
    parts = item.strip().split(":")
    rows.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "auto",
                 int(parts[3]) if len(parts) > 3 else 1))
  return rows


def run_rows(args) -> dict:
  """Runs every row in its own subprocess; returns the results with the machine info."""
  rows, t_start = [], time.time()
  results = dict(machine=machine_info(), command=" ".join(sys.argv), rows=rows,
                 torch_version=torch.__version__ if torch is not None else None,
                 omp_wait_policy=args.omp_wait_policy or os.environ.get("OMP_WAIT_POLICY", ""))
  for model, num_clients, impl, devices in parse_rows(args.rows):
    if args.time_budget_s and time.time() - t_start > args.time_budget_s:
      print(f"time budget of {args.time_budget_s} s spent: rows from {model}:{num_clients} "
            "on not run", flush=True)
      break
    cmd = [sys.executable, __file__, f"--one_row={model}:{num_clients}:{impl}:{devices}"]
    cmd += [f"--{k}={getattr(args, k)}" for k in ("batch", "steps", "repeats",
                                                   "loop_max_clients", "fedavg_max_clients",
                                                   "memory_margin_gib")]
    env = dict(os.environ)
    # PyTorch's OpenMP threads spin a while before they sleep (libgomp's default). On a
    # quiet machine that is its fastest setting: PASSIVE made its MLP loop 2.7x slower (9.7k
    # against 26.1k samples/s at M = 100) and left the JAX columns as they were. With more
    # runnable threads than cores (a shared machine) the spinning made it ~100x slower
    # (100 against 21,000 samples/s at M = 10), where --omp_wait_policy=PASSIVE helps.
    if args.omp_wait_policy:
      env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    if devices > 1:  # the CPU split into `devices` XLA devices, clients sharded over them
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "")
                          + f" --xla_force_host_platform_device_count={devices}")
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
      row = dict(model=model, clients=num_clients, conv_impl=impl, devices=devices,
                 error=f"exit {proc.returncode}: "
                 f"{(proc.stderr.strip().splitlines() or [''])[-1][-300:]}")
    else:
      row = json.loads(lines[-1])
    row["wall_s"] = time.time() - t0
    rows.append(row)
    print(format_row(row), flush=True)
    save_json(results, args.json)  # after every row: a run cut short keeps what it measured
  results["machine"] = machine_info()
  return results


def save_json(results: dict, path: str) -> None:
  """Writes the results so far to `path` (nothing when it is empty)."""
  if path:
    pathlib.Path(path).write_text(json.dumps(results, indent=1))


def machine_info() -> dict:
  load = os.getloadavg()
  return dict(date=datetime.date.today().isoformat(), platform=platform.platform(),
              processor=_cpu_name(), cores=os.cpu_count(),
              memory_gib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30,
              jax=jax.__version__, backend=jax.default_backend(),
              device=jax.devices()[0].device_kind, load_average_at_end=list(load))


def _cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def _fmt(row: dict, key: str, spec: str, suffix: str = "") -> str:
  value = row.get(key)
  return "–" if value is None else f"{value:{spec}}{suffix}"


def format_row(row: dict) -> str:
  """One markdown table row (see TABLE_HEADER)."""
  if "error" in row:
    return f"| {row['model']} | {row['clients']} | {row['conv_impl']} | failed: {row['error']} |"
  impl = row["resolved_conv_impl"] or "–"
  if row.get("devices", 1) > 1:
    impl += f", clients over {row['devices']} {row.get('backend', 'cpu').upper()} devices"
  return (f"| {row['model']} | {row['clients']} | {impl} | "
          f"{_fmt(row, 'vmapped_samples_per_s', ',.0f')} | "
          f"{1 / row['vmapped_s_per_step']:.2f} | "
          f"{_fmt(row, 'jax_loop_samples_per_s', ',.0f')} | "
          f"{_fmt(row, 'torch_loop_samples_per_s', ',.0f')} | "
          f"**{_fmt(row, 'vmapped_over_jax_loop', '.2f', 'x')}** | "
          f"**{_fmt(row, 'vmapped_over_torch_loop', '.2f', 'x')}** | "
          f"{row['gflops']:.1f} ({100 * row['matmul_fraction']:.0f}% of "
          f"{row['matmul_flops'] / 1e9:.0f}) | "
          f"{_fmt(row, 'roofline_fraction', '.0%')} | {row['compile_s']:.1f} | "
          f"{_fmt(row, 'fedavg_samples_per_s', ',.0f')} | {row['xla_memory_gib']:.2f} | "
          f"{row.get('peak_device_gib', row['peak_rss_gib']):.2f} |")


TABLE_HEADER = (
    "| model | M | conv, devices | vmapped samples/s | vmapped steps/s | jax loop samples/s | "
    "torch loop samples/s | vmapped / jax loop | vmapped / torch loop | "
    "vmapped GFLOP/s (% of matmul GFLOP/s) | % of roofline (MLP) | compile s | "
    "fedavg samples/s | XLA args+temp GiB | peak GiB (RSS; GPU: device) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown(results: dict) -> str:
  """The results block of RESULTS.md: machine, command, table, scaling in M."""
  m = results["machine"]
  omp = (f", OMP_WAIT_POLICY={results['omp_wait_policy']}"
         if results.get("omp_wait_policy") else "")
  lines = [f"Machine: {m['processor']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB; "
           f"{m['platform']}; JAX {m['jax']} ({m['backend']}, {m['device']}); PyTorch "
           f"{results['torch_version'] or 'not installed (torch loop column skipped)'}"
           f"{omp}; "
           f"{m['date']}. Load average (1, 5, 15 min) before: "
           f"{', '.join(f'{x:.2f}' for x in results.get('load_average_at_start', []))}; "
           f"after: {', '.join(f'{x:.2f}' for x in m['load_average_at_end'])}.", "",
           f"```\n{results['command']}\n```", "", TABLE_HEADER]
  lines += [format_row(r) for r in results["rows"]]
  lines += ["", "Time per step against M (vmapped, same model and convolution):", ""]
  for model in sorted({r["model"] for r in results["rows"]}):
    ok = sorted((r for r in results["rows"] if r["model"] == model and "error" not in r
                 and r["conv_impl"] == "auto" and r.get("devices", 1) == 1),
                key=lambda r: r["clients"])
    pairs = [f"M={a['clients']}→{b['clients']}: "
             f"×{b['vmapped_s_per_step'] / a['vmapped_s_per_step']:.1f}"
             f" (M ×{b['clients'] / a['clients']:.0f})" for a, b in zip(ok, ok[1:])]
    if pairs:
      lines.append(f"* {model}: " + "; ".join(pairs))
  for item, parts in results.get("profile", {}).items():
    whole = parts["whole step (+ sampling, updates, metrics)"]
    lines += ["", f"Where the time of one vmapped step goes, {item.replace(':', ' at M = ')} "
              "(each part jitted alone, timed interleaved; parts overlap):", "",
              "| part | ms | % of the whole step |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {100 * ms / whole:.0f}% |" for name, ms in parts.items()]
  return "\n".join(lines) + "\n"


def write_results_md(path: pathlib.Path, block: str) -> None:
  """Replaces the text between the bench_step markers of `path` with `block`."""
  text = path.read_text()
  start, end = text.index(RESULTS_BEGIN) + len(RESULTS_BEGIN), text.index(RESULTS_END)
  path.write_text(text[:start] + "\n" + block + text[end:])


def check(num_clients: int = 3, batch: int = 8, atol: float = 1e-4,
          with_torch: bool = True) -> dict:
  """One step of the library, the JAX client loop and (if installed) PyTorch, compared.

  From the same initial parameters and the same minibatches, every implementation must
  give the same M losses and the same updated parameters to `atol`.

  Args:
    num_clients: M.
    batch: examples per client.
    atol: largest absolute difference allowed.
    with_torch: check the PyTorch step too (when torch is installed).

  Returns:
    {model: {implementation: largest absolute difference}}.

  Raises:
    AssertionError: when an implementation differs by more than `atol`.
  """
  report = {}
  for model in ("mlp", "cnn"):
    config = make_config(model, num_clients, batch)
    federation = random_federation(num_clients, 40)
    algorithm = algorithms.build_algorithm(config, federation)
    train_data, _ = data.to_device(federation)
    state0 = jax.jit(algorithm.init_state)()
    x, y = data.sample_batches(train_data, jax.random.fold_in(state0.rng, state0.step), batch)
    state1, metrics = jax.jit(algorithm.step)(state0, train_data)
    want_losses = np.asarray(metrics["task_loss"])
    want = jax.tree.map(np.asarray, (state1.server.params, state1.clients.params))
    report[model] = {}

    jax_loop = JaxClientLoop(config, federation, state0.server.params,
                             state0.clients.params, state0.rng)
    losses = np.asarray(jax_loop.step())
    stacked = jax.tree.map(lambda *a: np.stack(a), *jax_loop.clients)
    report[model]["jax_loop"] = _max_diff((losses, (jax_loop.server, stacked)),
                                          (want_losses, want))
    if with_torch and torch is not None:
      sim = torch_split.TorchMTSL(model, num_clients, LR, LR)
      torch_split.load_jax_params(sim, state0.server.params, state0.clients.params)
      batches = [(torch.from_numpy(np.asarray(x[m]).transpose(0, 3, 1, 2).copy()),
                  torch.from_numpy(np.asarray(y[m]).astype(np.int64)))
                 for m in range(num_clients)]
      losses = np.asarray(sim.step(batches))
      # Compare in torch's layout: the library's new parameters loaded into a fresh copy.
      ref = torch_split.TorchMTSL(model, num_clients, LR, LR)
      torch_split.load_jax_params(ref, *want)
      report[model]["torch_loop"] = max(
          float(np.abs(losses - want_losses).max()),
          max(float((a - b).abs().max()) for a, b in zip(_torch_params(sim),
                                                         _torch_params(ref))))
    for name, diff in report[model].items():
      assert diff <= atol, f"{model}: {name} differs from the library's step by {diff:.2e}"
  return report


def _torch_params(sim):
  modules = [sim.server] + sim.bottoms + sim.tops
  return [p.detach() for module in modules for p in module.parameters()]


def _max_diff(got, want) -> float:
  return max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default=DEFAULT_ROWS,
                      help="model:M[:conv_impl] items; conv_impl 'auto', 'xla', 'patches'")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20,
                      help="vmapped MLP steps per timed call (CNN: half)")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per column")
  parser.add_argument("--loop_max_clients", type=int, default=1000,
                      help="no per-client loops above this M")
  parser.add_argument("--fedavg_max_clients", type=int, default=1000)
  parser.add_argument("--profile", default="mlp:100,cnn:10",
                      help="model:M items whose step is timed part by part ('' for none)")
  parser.add_argument("--memory_margin_gib", type=float, default=1.5,
                      help="skip a row whose runner needs more than the free memory less this")
  parser.add_argument("--omp_wait_policy", default="",
                      help="OMP_WAIT_POLICY of the row processes ('' leaves PyTorch's "
                           "default, the fastest on a quiet machine; PASSIVE on a shared one)")
  parser.add_argument("--json", default="", help="write the results here (after every row)")
  parser.add_argument("--time_budget_s", type=float, default=0,
                      help="start no new row after this many seconds (0: no limit)")
  parser.add_argument("--results_md", default="",
                      help="rewrite the block between the bench_step markers of this file")
  parser.add_argument("--from_json", default="",
                      help="only regenerate --results_md (or print) from this results file")
  parser.add_argument("--check", action="store_true",
                      help="check that the three implementations compute the same step")
  parser.add_argument("--one_row", default="", help=argparse.SUPPRESS)  # internal
  args = parser.parse_args()

  if args.check:
    print(json.dumps(check(), indent=1))
    if torch is None:
      print("torch is not installed: the PyTorch step was not checked")
    return
  if args.one_row:
    print(json.dumps(measure_row(*parse_rows(args.one_row)[0], args)))
    return
  if args.from_json:
    results = json.loads(pathlib.Path(args.from_json).read_text())
  else:
    if torch is None:
      print("torch is not installed: the torch loop column is skipped")
    load_before, t_start = list(os.getloadavg()), time.time()
    print(TABLE_HEADER, flush=True)
    results = run_rows(args)
    results["load_average_at_start"] = load_before
    results["profile"] = {}
    for item in filter(None, args.profile.split(",")):
      if args.time_budget_s and time.time() - t_start > args.time_budget_s:
        print(f"time budget spent: profile {item} not run", flush=True)
        continue
      model, num_clients = item.split(":")
      results["profile"][item] = profile_step(model, int(num_clients), args.batch,
                                              args.repeats + 2)
      save_json(results, args.json)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    save_json(results, args.json)
  block = markdown(results)
  if args.results_md:
    write_results_md(pathlib.Path(args.results_md), block)
  else:
    print(block)


if __name__ == "__main__":
  main()
