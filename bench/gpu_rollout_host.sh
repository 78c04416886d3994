#!/usr/bin/env bash
# Host side of a rollout step on the GPU machine (bench/rollout_host.py, issue 18): per part before/after
# (env step, build_inputs and the image processor of each family's benchmark shape with the stock
# torchvision processors, answer bookkeeping), the processed frames kept on the GPU and the image processor
# run on the GPU (with its largest difference from the host's pixels), then the PPO loop's whole rollout
# step on the Qwen2-VL-2B shape (static decoder, 128 envs, answers forced to 128 tokens) before and after.
# Run from the repository root on the GPU machine, carrying .whl (the wheels its image lacks); DRY=1 runs the
# same code paths on a CPU at tiny sizes.
set -euo pipefail
source bench/gpu_env.sh
if [ -n "${DRY:-}" ]; then  # the same code paths on this machine's CPU, tiny sizes (~20 s)
  exec python3 bench/rollout_host.py --device cpu --device-rows --n-envs 8 --steps 2 --families qwen2-vl \
    --rollout --shape tiny --preset numberline-tiny --max-new-tokens 16 --decoder static --out "$OUT"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 bench/rollout_host.py --device cuda --n-envs "${N_ENVS:-128}" --steps "${STEPS:-2}" --rollout \
  --rounds "${ROUNDS:-1}" --out "$OUT" 2>&1 | grep -v "Loading weights" | tee "$OUT/log.txt"
