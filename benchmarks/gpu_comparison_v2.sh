#!/usr/bin/env bash
# The comparison v2's GPU part, as one command on a machine with a GPU (e.g. one H200).
#
# Runs the 'gpu' profile of mtsl_jax/comparison/v2_grid.py (CIFAR-10 at the full budget:
# 2-D tuning grids, then every main cell with 5 seeds) into a COPY of the records, so that
# what a time-limited device computes comes back as records: the runner skips everything
# already recorded, and stops starting work when the budget is spent (the running cell is
# cut; its records are not written and it reruns next time). Every record names the
# machine it was computed on (`where`).
#
# Usage (repository root; needs jax with CUDA and the TFDS data_dir holding cifar10):
#   TFDS_DIR=/path/to/tfds bash benchmarks/gpu_comparison_v2.sh [BUDGET seconds, default 540]
# PROFILE (default gpu) picks another profile: PROFILE=test runs the embedded data on any
# machine (tests/test_comparison_v2.py checks the script that way).
# Output: OUT (default ./gpu_out): gpu.txt, runs.jsonl (all records: the old ones and the
# new), compare.txt. Back on the main machine, append the new lines to the records:
#   python -m mtsl_jax.comparison.merge_records OUT/runs.jsonl results/v2/runs.jsonl
set -uo pipefail
out=${OUT:-gpu_out}
budget=${1:-540}
tfds_dir=${TFDS_DIR:-../shared/tfds}
profile=${PROFILE:-gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 \
  | tee "$out/gpu.txt"
if [ "$profile" != test ] && [ ! -d "$tfds_dir/cifar10" ]; then
  echo "no CIFAR-10 under TFDS_DIR=$tfds_dir: set TFDS_DIR to a prepared data_dir" \
    | tee -a "$out/gpu.txt"
  exit 2
fi

cp results/v2/runs.jsonl "$out/runs.jsonl" 2>/dev/null || touch "$out/runs.jsonl"
timeout --signal=TERM "$budget" python3 launch/compare_v2.py --profile="$profile" \
  --phases=tune,main --results="$out/runs.jsonl" --tfds_data_dir="$tfds_dir" \
  --scratch="${SCRATCH:-/tmp/compare_v2}" 2>&1 | grep -v WARNING | tee "$out/compare.txt"
echo "records: $(wc -l < "$out/runs.jsonl") lines" | tee -a "$out/compare.txt"
