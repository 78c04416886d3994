#!/usr/bin/env bash
# Fast sampling figures (bench/RESULTS.md): bench/gpu_rollout.py on the Qwen2-VL-2B shape (random bf16
# weights) with the numberline-qwen preset: batch-1 baseline, generate vs the static decoder at N_ENVS,
# answers forced to 128 tokens and ending after 30-80; then transformers' static cache + compile.
# Run from the repository root on the GPU machine (the wheels in .whl/ supply what its image lacks).
set -euo pipefail
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m vlmppo env > "$OUT/versions.txt" 2>&1 || true
python3 bench/gpu_rollout.py --preset "${PRESET:-numberline-qwen}" --shape qwen2-vl-2b \
  --n-envs "${N_ENVS:-32,128}" --repeats "${REPEATS:-2}" --max-new-tokens 128 --lengths 30-80 \
  ${HF_COMPILE:+--hf-compile} --out "$OUT" 2>&1 | grep -v "Loading weights" | tee "$OUT/log.txt"
