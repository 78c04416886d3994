#!/usr/bin/env bash
# RL variants side by side from ONE weak start (docs/learning.md, issue 23): the curve protocol's SFT phase once
# (bench/learning_curve.py, PHASE=sft), then one PHASE=rl process per variant, all at once on the one GPU (a
# 14M-parameter model leaves the card mostly idle), each in its own run and report (learning-<task>-rl-<tag>.*).
#
#   VARIANTS="gae=ppo.lr=3e-5;gigpo=ppo.advantage=gigpo ppo.group_size=8" SFT_BUDGET_S=280 RL_BUDGET_S=270 \
#     TASK=numberline SFT_STEPS=4000 CURVE_POINTS=8 bash bench/gpu_learning_sweep.sh
#   DRY=1 VARIANTS="a=ppo.lr=1e-4;b=ppo.advantage=grpo ppo.group_size=2" bash bench/gpu_learning_sweep.sh
#
# SFT_BUDGET_S bounds the SFT phase (data, baselines, the time-boxed SFT, the checkpoints' evals); each RL variant
# then gets RL_BUDGET_S. Every other knob is bench/learning_curve.py's (WEAK_MAX, WEAK_CKPT, EXTRA, SEED, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
export TASK=${TASK:-numberline} OUT PROTOCOL=curve
if [ "${DRY:-0}" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" RUNS=${RUNS:-$(mktemp -d)}
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  export RUNS=${RUNS:-.gpu/learning-runs}
fi
PHASE=sft BUDGET_S=${SFT_BUDGET_S:-280} RL_S=0 python3 bench/learning_curve.py
IFS=';' read -ra SPECS <<< "${VARIANTS:?VARIANTS=\"tag=overrides;tag=overrides\"}"
pids=()
for spec in "${SPECS[@]}"; do
  tag=${spec%%=*}
  PHASE=rl RL_TAG=$tag RL_EXTRA=${spec#*=} BUDGET_S=${RL_BUDGET_S:-270} python3 bench/learning_curve.py \
    > "$OUT/sweep-$TASK-$tag.txt" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for spec in "${SPECS[@]}"; do tail -n 4 "$OUT/sweep-$TASK-${spec%%=*}.txt"; done
exit $status
