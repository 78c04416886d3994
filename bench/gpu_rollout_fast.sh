#!/usr/bin/env bash
# The GPU cost of one rollout step per part, issue 18's step-side changes off and on (bench/gpu_rollout_fast.py):
# Qwen2-VL-2B shape, static decoder, NumberLine, 32 and 128 envs, answers forced to 128 tokens and of 30-80.
# Run from the repository root on the GPU machine, carrying .whl; ~4-6 minutes. DRY=1 runs the same code paths on
# this machine's CPU at tiny sizes (~1 minute).
set -euo pipefail
source bench/gpu_env.sh
if [ -n "${DRY:-}" ]; then
  exec python3 bench/gpu_rollout_fast.py --shape tiny --preset numberline-tiny --device cpu --n-envs 2,4 \
    --max-new-tokens 8 --lengths 3-6 --repeats 1 --out "$OUT"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 bench/gpu_rollout_fast.py --n-envs "${N_ENVS:-32,128}" --repeats "${REPEATS:-2}" ${VARIANTS:+--variants "$VARIANTS"} \
  --out "$OUT" 2>&1 | grep -v "Loading weights" | tee "$OUT/log.txt"
