#!/usr/bin/env bash
# A study's GPU part, as one command on a machine with a GPU (e.g. one H200).
#
# STUDY=compare_v2 (default): the comparison v2's 'gpu' profile (CIFAR-10 at the full
# budget: 2-D tuning grids, then every main cell with 5 seeds), records
# results/v2/runs.jsonl. STUDY=server_map: the server map's CNN slice ('cnn'), then the
# whole MLP map ('full'), records results/server_map/runs.jsonl.gz. STUDY=privacy: the
# privacy study's MNIST and Fashion-MNIST rows, records results/privacy/runs.jsonl.
#
# The runs go into a COPY of the records, so that what a time-limited device computes
# comes back as records: the runner skips everything already recorded, and stops starting
# work when the budget is spent (the running cell is cut; its records are not written and
# it reruns next time). Every record names the machine it was computed on (`where`).
#
# Usage (repository root; needs jax with CUDA and a TFDS data_dir holding the datasets):
#   TFDS_DIR=/path/to/tfds STUDY=server_map bash benchmarks/gpu_study.sh [BUDGET s, 540]
# PROFILES (space-separated) picks other profiles: PROFILES=test runs the embedded data on
# any machine (tests/test_comparison_v2.py checks the script that way).
# Output: OUT (default ./gpu_out): gpu.txt, runs.jsonl (all records: the old ones and the
# new), study.txt. Back on the main machine, append the new lines to the records:
#   python -m mtsl_jax.comparison.merge_records OUT/runs.jsonl results/v2/runs.jsonl
#   (results/server_map/runs.jsonl.gz or results/privacy/runs.jsonl for the other studies)
set -uo pipefail
out=${OUT:-gpu_out}
budget=${1:-540}
tfds_dir=${TFDS_DIR:-../shared/tfds}
study=${STUDY:-compare_v2}
case "$study" in
  compare_v2) records=results/v2/runs.jsonl; phases=tune,main; defaults="gpu"
              needs=cifar10 ;;
  server_map) records=results/server_map/runs.jsonl.gz; phases=tune,map,ablations,retune
              defaults="cnn full"; needs=fashion_mnist ;;
  privacy) records=results/privacy/runs.jsonl; phases=run
           defaults="cpu cpu_fashion_mnist"; needs=fashion_mnist ;;
  *) echo "STUDY must be compare_v2, server_map or privacy, got '$study'" >&2; exit 2 ;;
esac
profiles=${PROFILES:-$defaults}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 \
  | tee "$out/gpu.txt"
if [ "$profiles" != test ] && [ ! -d "$tfds_dir/$needs" ]; then
  echo "no $needs under TFDS_DIR=$tfds_dir: set TFDS_DIR to a prepared data_dir" \
    | tee -a "$out/gpu.txt"
  exit 2
fi

# The device works on a plain JSONL copy of the records (the repository's may be gzipped).
touch "$out/runs.jsonl"
[ -e "$records" ] && python3 -m mtsl_jax.comparison.merge_records "$records" "$out/runs.jsonl" \
  > /dev/null
# The privacy study's FedAvg row reads its attacker's tuned setting beside the records.
if [ "$study" = privacy ] && [ -e results/privacy/attacker_tuning.jsonl ]; then
  cp results/privacy/attacker_tuning.jsonl "$out/"
fi
deadline=$((SECONDS + budget))
for profile in $profiles; do
  left=$((deadline - SECONDS))
  [ "$left" -le 0 ] && break
  timeout --signal=TERM "$left" python3 "launch/$study.py" --profile="$profile" \
    --phases="$phases" --results="$out/runs.jsonl" --tfds_data_dir="$tfds_dir" \
    --scratch="${SCRATCH:-/tmp/$study}" 2>&1 | grep -v WARNING | tee -a "$out/study.txt"
done
echo "records: $(wc -l < "$out/runs.jsonl") lines" | tee -a "$out/study.txt"
