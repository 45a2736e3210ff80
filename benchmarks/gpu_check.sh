#!/usr/bin/env bash
# One-shot GPU check (< 8 minutes on one H200): every domain's default and large model, bf16,
# a fixed number of steps; loss falls, samples finite; items/s and peak CUDA memory to JSON.
#   bash benchmarks/gpu_check.sh [--steps N] [--out FILE]        (default benchmarks/results/gpu_check.json)
#   bash benchmarks/gpu_check.sh --cpu-smoke --out /tmp/g.json    (tiny CPU run: the script is not broken)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
