#!/usr/bin/env bash
# The H100 figures of bench/RESULTS.md: vlmppo bench on the Qwen2-VL-2B shape (random bf16 weights).
# Run from the repository root on a GPU machine with torch + transformers (+ the wheels in .whl/ where
# gymnasium, minigrid and pydantic are missing). Results go to $OUT (default bench/out/).
# Knobs: N_ENVS, REPEATS, NEW_TOKENS, NAME, EXTRA (overrides, e.g. 'model.lora=null'), DOORKEY=0 to skip.
set -euo pipefail
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -m vlmppo env | tee "$OUT/versions.txt"
NEW=${NEW_TOKENS:-128}
python3 -m vlmppo bench --preset numberline-qwen --shape qwen2-vl-2b --n-envs "${N_ENVS:-1,8,16,32,64}" \
  --repeats "${REPEATS:-3}" --out "$OUT/${NAME:-numberline-2b}.json" "ppo.max_new_tokens=$NEW" ${EXTRA:-} 2>&1 |
  tee "$OUT/log.txt"
if [ "${DOORKEY:-1}" = 1 ]; then
  python3 -m vlmppo bench --preset minigrid-doorkey-qwen --shape qwen2-vl-2b --n-envs "${DOORKEY_N_ENVS:-1,32}" \
    --repeats "${REPEATS:-3}" --out "$OUT/doorkey-2b.json" "ppo.max_new_tokens=$NEW" 2>&1 | tee -a "$OUT/log.txt"
fi
