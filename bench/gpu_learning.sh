#!/usr/bin/env bash
# One task's whole learning protocol on one GPU, inside one call of at most ~9 minutes (docs/learning.md):
# expert data -> weak-start SFT -> strong SFT -> PPO from the weak start -> greedy evals of each against the
# expert and random baselines; writes learning-<task>.md / .json / .png (curves) and .log to $OUT.
#
#   TASK=numberline|minigrid-empty|minigrid-doorkey|ezpoints  BUDGET_S=510  SEED=0  bash bench/gpu_learning.sh
#   DRY=1 TASK=numberline bash bench/gpu_learning.sh    # the same commands on a CPU, tiny model, toy sizes
#   PROTOCOL=curve PHASE=sft|rl|all ...                 # one long SFT curve, RL from its weak point (learning_curve.py)
#
# Knobs (bench/learning.py): WEAK_STEPS, WEAK_SAMPLES, SFT_STEPS, SFT_SHARE, EXTRA (overrides for every command).
# The GPU image lacks gymnasium, minigrid, pygame-ce and pydantic: carry them as wheels in .whl/ (gpu_env.sh
# installs them): gymnasium, farama-notifications, minigrid, pygame-ce, pydantic, pydantic-core, annotated-types,
# typing-inspection (cp312 manylinux; ~15 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
export TASK=${TASK:-numberline} OUT
if [ "${DRY:-0}" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" RUNS=${RUNS:-$(mktemp -d)}
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  export RUNS=${RUNS:-/tmp/learning-runs}
fi
if [ "${PROTOCOL:-steps}" = curve ]; then
  # The curve protocol (bench/learning_curve.py): PHASE=sft|rl|all; a warm machine keeps RUNS inside the tree.
  export RUNS=${RUNS_CURVE:-.gpu/learning-runs}
  python3 bench/learning_curve.py
else
  rm -f "$OUT/learning-$TASK.log"
  python3 bench/learning.py
fi
