"""Throughput of the MTSL step (and a FedAvg round) against a per-client loop.

For each model (the MNIST MLP 784-200-200-10 and the CNN conv5x5-32/pool/conv5x5-64/pool/
dense-512/dense-10, both cut U-shaped: one block on each client side) and each number of
clients M, measured in the same process:

  * vmapped: the library's jitted multi-step runner (clients vmapped, `--steps` steps per
    call, data on the device) — what `train.py` runs;
  * loop: the same JAX functions called once per client from Python (a jitted gradient of
    one client's loss, then one jitted server update per step) — how a jit-per-client
    simulator works;
  * fedavg: one FedAvg round (5 local steps per client, vmapped), per local step.

Reported: client samples/s, steps/s, the ratio vmapped/loop, compile time, the achieved
FLOP/s (XLA's cost analysis of one step) against a dense f32 matmul measured in the same
run, and the process's peak resident memory. Runs on whatever device JAX has.

  python benchmarks/bench_step.py                     # MLP M=1,10,100; CNN M=1,10
  python benchmarks/bench_step.py --models=mlp --clients=1,10,100,1000
"""

import argparse
import json
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# pylint: disable=wrong-import-position
from mtsl_jax import algorithms, config_base, data, loop, split

EXAMPLES_PER_CLIENT = 256


def make_config(model: str, num_clients: int, batch: int, algorithm: str = "mtsl"):
  config = config_base.base_config()
  config.algorithm = algorithm
  config.data.num_clients = num_clients
  config.model.name = model
  config.model.hidden_sizes = (200, 200)
  config.batch_size = batch
  config.fl.local_steps = 5
  config.server_optimizer.learning_rate = 1.0 if algorithm == "fedavg" else 0.05
  config.client_optimizer.learning_rate = 0.05
  return config


def random_federation(num_clients: int, input_shape, seed: int = 0) -> data.Federation:
  """Random inputs and labels with the real shapes (the values do not affect speed)."""
  rng = np.random.default_rng(seed)
  xs = tuple(rng.normal(size=(EXAMPLES_PER_CLIENT,) + input_shape).astype(np.float32)
             for _ in range(num_clients))
  ys = tuple(rng.integers(0, 10, EXAMPLES_PER_CLIENT).astype(np.int32)
             for _ in range(num_clients))
  return data.Federation(xs, ys, xs, ys, np.full(num_clients, 10, np.int32), input_shape,
                         "random")


def timed(fn, repeats: int) -> float:
  """Median seconds of `fn()` (which must block until done)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def matmul_flops_per_second(n: int = 2048) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  return 2 * n ** 3 / timed(lambda: f(a).block_until_ready(), 5)


def bench_vmapped(config, federation, steps: int):
  """(seconds per step, compile seconds, FLOPs per step) of the library's runner."""
  algorithm = algorithms.build_algorithm(config, federation)
  train_data, _ = data.to_device(federation)
  run = loop.make_multi_step(algorithm.step)
  state = jax.jit(algorithm.init_state)()
  n = jnp.asarray(steps, jnp.int32)
  t0 = time.perf_counter()
  state, _ = run(state, train_data, n)
  jax.block_until_ready(state)
  first = time.perf_counter() - t0

  def go():
    nonlocal state
    state, _ = run(state, train_data, n)
    jax.block_until_ready(state)

  per_call = timed(go, 3)
  flops = jax.jit(algorithm.step).lower(state, train_data).compile().cost_analysis()
  flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
  return per_call / steps, max(first - per_call, 0.0), flops


def bench_loop(config, federation, steps: int) -> float:
  """Seconds per step when every client's work is its own jitted call."""
  algorithm = algorithms.build_algorithm(config, federation)
  del algorithm  # built only to use the same validated pieces below
  model = split.make_split_model(config.model, config.split, 10)
  m_count = federation.num_clients
  sp, cp = split.init_params(model, jax.random.PRNGKey(0), federation.input_shape, m_count)
  clients = [jax.tree.map(lambda a, m=m: a[m], cp) for m in range(m_count)]
  lr = config.client_optimizer.learning_rate
  weight = 1.0 / m_count

  @jax.jit
  def client_step(sp, cp_m, x, y):
    """One client's loss gradient and its own SGD update; returns the server gradient."""
    def loss(sp, cp_m):
      h = model.bottom.apply(cp_m["bottom"], x)
      logits = model.top.apply(cp_m["top"], model.server.apply(sp, h))
      return split.masked_cross_entropy(logits, y, 10)
    g_s, g_c = jax.grad(loss, argnums=(0, 1))(sp, cp_m)
    new_cp = jax.tree.map(lambda p, g: p - lr * g, cp_m, g_c)
    return jax.tree.map(lambda g: weight * g, g_s), new_cp

  @jax.jit
  def server_step(sp, grads):
    total = jax.tree.map(lambda *g: sum(g), *grads)
    return jax.tree.map(lambda p, g: p - config.server_optimizer.learning_rate * g, sp, total)

  xs = [jnp.asarray(x[:config.batch_size]) for x in federation.train_x]
  ys = [jnp.asarray(y[:config.batch_size]) for y in federation.train_y]

  def one_step():
    nonlocal sp
    grads = []
    for m in range(m_count):
      g, clients[m] = client_step(sp, clients[m], xs[m], ys[m])
      grads.append(g)
    sp = server_step(sp, grads)
    jax.block_until_ready(sp)

  one_step()  # compile
  return timed(lambda: [one_step() for _ in range(steps)], 3) / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="mlp,cnn")
  parser.add_argument("--clients", default="1,10,100")
  parser.add_argument("--cnn_max_clients", type=int, default=10)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  peak = matmul_flops_per_second()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); dense f32 matmul "
        f"{peak / 1e9:.1f} GFLOP/s")
  print("| model | M | vmapped samples/s | loop samples/s | vmapped / loop | "
        "GFLOP/s (% of matmul) | compile s | fedavg samples/s | peak RSS GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  rows = []
  shapes = {"mlp": (28, 28, 1), "cnn": (28, 28, 1)}
  for model in args.models.split(","):
    for m in (int(c) for c in args.clients.split(",")):
      if model == "cnn" and m > args.cnn_max_clients:
        continue
      federation = random_federation(m, shapes[model])
      steps = args.steps if model == "mlp" else max(2, args.steps // 5)
      config = make_config(model, m, args.batch)
      sec, compile_s, flops = bench_vmapped(config, federation, steps)
      loop_sec = bench_loop(config, federation, max(2, steps // (1 if m < 100 else 4)))
      fed_sec, _, _ = bench_vmapped(make_config(model, m, args.batch, "fedavg"), federation,
                                    max(1, steps // 5))
      samples = m * args.batch
      row = dict(model=model, clients=m, vmapped_samples_per_s=samples / sec,
                 loop_samples_per_s=samples / loop_sec, ratio=loop_sec / sec,
                 gflops=flops / sec / 1e9, peak_fraction=flops / sec / peak,
                 compile_s=compile_s, fedavg_samples_per_s=5 * samples / fed_sec,
                 peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20)
      rows.append(row)
      print(f"| {model} | {m} | {row['vmapped_samples_per_s']:.0f} | "
            f"{row['loop_samples_per_s']:.0f} | {row['ratio']:.1f}x | {row['gflops']:.1f} "
            f"({100 * row['peak_fraction']:.0f}%) | {compile_s:.1f} | "
            f"{row['fedavg_samples_per_s']:.0f} | {row['peak_rss_gib']:.2f} |", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"matmul_flops": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
  main()
