#!/usr/bin/env bash
# The accelerator check of benchmarks/RESULTS.md, as one command on a machine with a GPU.
#
#   1. The GPU path: `bench_step.py --check` at full f32 precision (the library's step, the
#      jit-per-client JAX loop and the PyTorch loop agree after one step from the same
#      parameters and batches), and the README's main job (launch/train.py, default config).
#   2. The benchmark: `bench_step.py` on the rows below, its JSON rewritten after every row
#      so that a run cut short keeps what it measured; the row loop stops starting rows after
#      BUDGET seconds.
#   3. PFLlib's MNIST setting (`bench_rounds.py`): its --check at full f32 precision, then
#      its rows for at most BUDGET / 2 seconds (JSON after every row). The whole script
#      ends in about 1.5 x BUDGET + 4 minutes.
#
# Usage (repository root; needs jax with CUDA, flax, optax, ml-collections and, for the
# PyTorch column, torch with CUDA):
#   bash benchmarks/gpu_check.sh [BUDGET seconds, default 300]
# Output: OUT (default ./gpu_out): gpu.txt, check.txt, train.txt, results_gpu.json,
# bench.txt, rounds_check.txt, results_rounds_gpu.json and rounds.txt. `python benchmarks/bench_step.py --from_json OUT/results_gpu.json` prints the
# tables.
set -uo pipefail
out=${OUT:-gpu_out}
budget=${1:-300}
rows=${ROWS:-mlp:100,cnn:10,cnn:100,mlp:10,mlp:1000,mlp:1,cnn:1,cnn:100:patches,mlp:10000,cnn:1000}
mkdir -p "$out"
# JAX takes 60% of the GPU's memory, leaving the rest to the PyTorch loop in the same row.
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.6

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(),
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__,
'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$out/gpu.txt"

JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 python3 benchmarks/bench_step.py --check \
  2>&1 | tail -15 | tee "$out/check.txt"

rm -rf /tmp/gpu_check_train
{ time timeout 120 python3 launch/train.py --config configs/default.py \
    --workdir /tmp/gpu_check_train; } 2>&1 | tr '\r' '\n' | grep -v '%|' | tail -8 \
  | tee "$out/train.txt"

python3 benchmarks/bench_step.py --rows="$rows" --steps=40 --repeats=3 \
  --profile=mlp:100,cnn:100 --time_budget_s="$budget" --json "$out/results_gpu.json" \
  2>&1 | tee "$out/bench.txt"

JAX_DEFAULT_MATMUL_PRECISION=highest timeout 180 python3 benchmarks/bench_rounds.py --check \
  2>&1 | tail -15 | tee "$out/rounds_check.txt"
timeout "$((budget / 2))" python3 benchmarks/bench_rounds.py \
  --json "$out/results_rounds_gpu.json" 2>&1 | tee "$out/rounds.txt"
