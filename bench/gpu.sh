#!/usr/bin/env bash
# The GPU benchmark: stargan against the PyTorch reference on the same card, at the official
# configuration (128 px, G 64×6 res, D 64×6, batch 16), in fp32 and in bf16.
#
#   bench/gpu.sh [OUT_DIR]          (default OUT_DIR: bench-gpu, git-ignored)
#
# Needs a CUDA GPU and network access to PyPI (it assembles the CUDA libtorch with
# `scripts/setup.sh --cuda`, builds stargan against it into target/cuda, and creates the reference
# venv with `bench/setup-reference.sh`). Both steps are no-ops when already done, so a rerun only
# measures. Writes OUT_DIR/{machine.txt, fp32.txt, fp32.json, bf16.txt, bf16.json}; the .txt files
# are the tables for BENCHMARKS.md. Settings can be overridden through the environment:
#   BATCH=16 WARMUP=3 ITERS=10 ROUNDS=3 WHAT=d_step,g_step,iteration,translate
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-gpu}
mkdir -p "$out"

: "${BATCH:=16}" "${WARMUP:=3}" "${ITERS:=10}" "${ROUNDS:=3}" "${WHAT:=d_step,g_step,iteration,translate}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu.sh: no NVIDIA GPU visible (nvidia-smi -L failed)" >&2
  exit 1
fi

echo "gpu.sh: assembling the CUDA libtorch" >&2
scripts/setup.sh --cuda
echo "gpu.sh: building stargan against it (target/cuda)" >&2
CARGO_TARGET_DIR=target/cuda cargo build --release --quiet
bin=target/cuda/release/stargan
echo "gpu.sh: setting up the reference venv" >&2
py=$(bench/setup-reference.sh)

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$py" -c 'import torch; print("reference torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
  git rev-parse --short HEAD
} | tee "$out/machine.txt"

for precision in fp32 bf16; do
  echo "gpu.sh: $precision" >&2
  "$bin" bench --device cuda --batch-size "$BATCH" --precision "$precision" \
    --warmup "$WARMUP" --iters "$ITERS" --rounds "$ROUNDS" --what "$WHAT" \
    --reference "$py" --json "$out/$precision.json" | tee "$out/$precision.txt"
done
echo "gpu.sh: results in $out/" >&2
