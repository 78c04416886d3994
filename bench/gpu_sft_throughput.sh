#!/usr/bin/env bash
# Where an SFT step's time goes, before and after the collator cache, the collator's position ids and the
# loop-free Qwen2-VL vision tower (bench/sft_throughput.py): ~1-2 minutes on one H200. Writes sft-throughput.md /
# .json and sft-profile.txt to $OUT. Carry the wheels the GPU image lacks in .whl/ (see bench/gpu_env.sh).
#   run(command="bash bench/gpu_sft_throughput.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
export OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 bench/sft_throughput.py 2>&1 | grep -v "it/s]" | tee "$OUT/sft-throughput.log"
