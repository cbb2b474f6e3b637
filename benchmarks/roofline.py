"""Memory bandwidth and a roofline for the vmapped MTSL MLP step of `bench_step.py`.

`stream_bandwidth` measures the default backend's memory bandwidth as STREAM does (copy
a = b and triad a = b + s c on f32 arrays, ~256 MB each, best of several, bytes counted
as STREAM counts them: 2 and 3 arrays per pass). `mtsl_mlp_step_bytes` counts by hand the
bytes one vmapped MTSL step of bench_step's MLP (784-200-200-10, U-shaped cut: client
bottom 784x200, server 200x200, client head 200x10; SGD) must move at M clients and batch
B (see its docstring, term by term). Then

  arithmetic intensity I = FLOPs / bytes, FLOPs = bench_step.model_flops_per_example x M x B
  roofline = min(matmul FLOP/s, bandwidth x I)

and `bench_step.py`'s MLP rows report their achieved FLOP/s as a percentage of it.

  python benchmarks/roofline.py                      # bandwidth, matmul, table over M
  python benchmarks/roofline.py --mb 64 --clients 1,100
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

F32 = 4  # bytes
MLP_SIZES = (784, 200, 200, 10)  # bench_step's MLP: input, hidden, hidden, classes


def stream_bandwidth(megabytes: float = 256, repeats: int = 5) -> dict:
  """STREAM's copy and triad on the default device, in bytes per second (best time).

  Each kernel writes into a donated array, so the output reuses a buffer already in
  memory: a freshly allocated 256 MB output costs a page fault per 4 KiB page on the
  CPU's first touch, which made the same triad ~6x slower here and is not bandwidth.

  Args:
    megabytes: size of each of the three f32 arrays (2^20 bytes).
    repeats: timed passes of each kernel after one warm-up; the fastest counts.

  Returns:
    {'copy': bytes/s, 'triad': bytes/s, 'bytes_per_array': int}; bytes counted as STREAM
    does: copy moves 2 arrays (read b, write a), triad 3 (read b and c, write a).
  """
  n = int(megabytes * 2 ** 20) // F32
  b, c = jnp.full((n,), 1.0, jnp.float32), jnp.full((n,), 2.0, jnp.float32)
  # keep_unused: without it jit drops the unused `a`, and its donation with it.
  kernels = {"copy": (jax.jit(lambda a, b, c: b * 1.0, donate_argnums=0, keep_unused=True),
                      2),
             "triad": (jax.jit(lambda a, b, c: b + 3.0 * c, donate_argnums=0,
                               keep_unused=True), 3)}
  out = {"bytes_per_array": n * F32}
  a = jnp.zeros((n,), jnp.float32)
  for name, (kernel, arrays) in kernels.items():
    times = []
    for i in range(repeats + 1):
      t0 = time.perf_counter()
      a = kernel(a, b, c)
      a.block_until_ready()
      if i:  # the first pass compiles
        times.append(time.perf_counter() - t0)
    out[name] = arrays * n * F32 / min(times)
  return out


def mtsl_mlp_step_terms(num_clients: int, batch: int, sizes=MLP_SIZES) -> dict:
  """Bytes one vmapped MTSL step of an MLP must move, term by term (f32, int32 labels).

  The MLP d_0 -> d_1 -> ... -> d_L (dense + ReLU, the last dense the head) is cut
  U-shaped: client m holds the bottom layer 1 and the head layer L (P_c parameters),
  the server layers 2..L-1 (P_s). One step at M clients, batch B, SGD on both sides,
  counting every array that must cross memory once per use (nothing assumed to stay in
  cache between the passes; the lower bound a fused program could reach):

    client params, forward:           M P_c        read
    client kernels, backward:         M d_{L-1} d_L  the head's, for the cut gradient; the
                                                   bottom's input gradient is not needed,
                                                   so its kernel is not read again
    client gradients:                 2 M P_c      written by the backward, read by SGD
    client update:                    2 M P_c      params read and written by SGD
    server params, forward:           P_s          read once for all M B rows
    server kernels, backward:         Σ_{l=2}^{L-1} d_{l-1} d_l   (input gradients)
    server gradient:                  2 P_s        written, read by SGD
    server update:                    2 P_s        read and written
    minibatch gather:                 2 M B d_0    rows read from the client data, the
                                                   batch written
    batch reads:                      2 M B d_0    by the bottom's forward and its weight
                                                   gradient
    labels:                           3 M B        gathered (read, write), read by the loss
    activations:                      3 M B Σ_{l=1}^{L} d_l   each layer's output written,
                                                   read by the next layer (the loss), read
                                                   again by the backward (ReLU mask and
                                                   the next layer's weight gradient)
    activation gradients:             2 M B Σ_{l=1}^{L} d_l   written, read

  (all times 4 bytes). Not counted: the library's own extras beyond the step (gradient
  norms for the divergence guard, the 1/w_m rescaling of the fused client gradients),
  which a fused program can fold into the passes above.

  Args:
    num_clients: M.
    batch: B.
    sizes: (d_0, ..., d_L), at least 3 layers (bottom, server, head).

  Returns:
    {term: bytes}, in the order above.
  """
  m, b, d = num_clients, batch, tuple(sizes)
  layers = list(zip(d, d[1:]))  # (fan in, fan out) of layers 1..L
  if len(layers) < 3:
    raise ValueError(f"a U-shaped cut needs at least 3 layers, got sizes {sizes}")
  params = [i * o + o for i, o in layers]
  p_c, p_s = params[0] + params[-1], sum(params[1:-1])
  server_kernels = sum(i * o for i, o in layers[1:-1])
  acts = sum(d[1:])
  counts = {"client params, forward": m * p_c,
            "client kernels, backward": m * layers[-1][0] * layers[-1][1],
            "client gradients": 2 * m * p_c,
            "client update": 2 * m * p_c,
            "server params, forward": p_s,
            "server kernels, backward": server_kernels,
            "server gradient": 2 * p_s,
            "server update": 2 * p_s,
            "minibatch gather": 2 * m * b * d[0],
            "batch reads": 2 * m * b * d[0],
            "labels": 3 * m * b,
            "activations": 3 * m * b * acts,
            "activation gradients": 2 * m * b * acts}
  return {k: F32 * v for k, v in counts.items()}


def mtsl_mlp_step_bytes(num_clients: int, batch: int, sizes=MLP_SIZES) -> int:
  """The total of `mtsl_mlp_step_terms`: bytes one step must move."""
  return sum(mtsl_mlp_step_terms(num_clients, batch, sizes).values())


def roofline_flops(matmul_flops: float, bandwidth: float, flops: float,
                   num_bytes: float) -> float:
  """min(peak FLOP/s, bandwidth x intensity), intensity = flops / num_bytes.

  Args:
    matmul_flops: the compute ceiling (a dense matmul's measured FLOP/s).
    bandwidth: the memory ceiling, bytes/s.
    flops: the work's FLOPs.
    num_bytes: the bytes it must move.

  Returns:
    The attainable FLOP/s.
  """
  return min(matmul_flops, bandwidth * flops / num_bytes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mb", type=float, default=256, help="MB per STREAM array")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--clients", default="1,10,100,1000", help="M values of the table")
  parser.add_argument("--batch", type=int, default=32)
  args = parser.parse_args()
  # Imported here: bench_step imports this module (for its roofline column).
  import bench_step  # pylint: disable=import-outside-toplevel

  stream = stream_bandwidth(args.mb, args.repeats)
  matmul = bench_step.matmul_flops_per_second()
  config = bench_step.make_config("mlp", 1, args.batch)
  per_example = bench_step.model_flops_per_example(config.model)
  print(f"{jax.default_backend()}: STREAM copy {stream['copy'] / 1e9:.1f} GB/s, triad "
        f"{stream['triad'] / 1e9:.1f} GB/s ({stream['bytes_per_array'] / 2 ** 20:.0f} MB "
        f"arrays); matmul {matmul / 1e9:.1f} GFLOP/s")
  print("| M | MB per step | FLOP/byte | roofline GFLOP/s (triad) | bound |\n|---|---|---|---|---|")
  for m in (int(v) for v in args.clients.split(",")):
    flops, num_bytes = per_example * m * args.batch, mtsl_mlp_step_bytes(m, args.batch)
    roof = roofline_flops(matmul, stream["triad"], flops, num_bytes)
    bound = "compute" if np.isclose(roof, matmul) else "memory"
    print(f"| {m} | {num_bytes / 1e6:.2f} | {flops / num_bytes:.2f} | {roof / 1e9:.1f} | "
          f"{bound} |")


if __name__ == "__main__":
  main()
