#!/usr/bin/env bash
# 4-bit (QLoRA) bases against bf16 LoRA on an emulated 24 GB card (bench/RESULTS.md, issue 24): SFT and PPO
# peaks, the dry-run's estimates and samples/s, on the Qwen2-VL-2B and LLaVA-1.6-Mistral-7B shapes (random
# weights built from their configs on the GPU; nothing is downloaded), the 7B with the numberline-llava-4bit
# preset's settings. Each stage runs in its own Python process. Writes $OUT/quant.md and quant.json.
# Run from the repository root on one H200, carrying .whl (gymnasium, minigrid, pydantic, ...) and .whl-bnb
# (bitsandbytes). Knobs: CASES (e.g. 1,3), BUDGET_S (seconds after the start past which no new stage starts;
# default 390; a stage may then run STAGE_TIMEOUT_S or up to 90 s past it), STAGE_TIMEOUT_S (seconds one stage
# may take before it is killed and reported as a timeout), QUANT_DECODER=generate (4bit PPO samples with
# transformers' generate instead of the static decoder).
set -euo pipefail
export BENCH_DEADLINE=$(( $(date +%s) + ${BUDGET_S:-390} ))  # no new stage starts after it
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import bitsandbytes, torch; print('bitsandbytes', bitsandbytes.__version__, 'torch', torch.__version__)" \
  2>&1 | tail -1 | tee -a "$OUT/gpu.txt" || true
# First the tiny 4-bit models of all four families through the GPU path (CUDA graphs through 4-bit linears).
timeout 120 python3 -m pytest -m gpu tests/test_quantization.py -q -p no:cacheprovider 2>&1 | tail -15 \
  | tee "$OUT/gpu_tests.txt" || true
python3 bench/gpu_quant.py --out "$OUT" 2>&1 | grep -v "Loading weights\|Writing model shards" | tee "$OUT/log.txt"
