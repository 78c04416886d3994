#!/usr/bin/env bash
# Several tasks' curve protocol (bench/learning_curve.py, PHASE=all) at once on the one GPU: a 14M-parameter model
# leaves the card mostly idle, so three tasks take one call instead of three. Each task runs in its own process
# with its own knobs; every report keeps its usual name (learning-<task>-all.*), and the console of each goes to
# $OUT/tasks-<task>.txt.
#
#   TASKS="minigrid-empty:SFT_STEPS=3000 WEAK_MAX=0.9;ezpoints:SFT_STEPS=3000" BUDGET_S=540 \
#     bash bench/gpu_learning_tasks.sh
#   DRY=1 TASKS="minigrid-empty:SFT_STEPS=4;ezpoints:SFT_STEPS=4" bash bench/gpu_learning_tasks.sh
#
# Knobs shared by every task (BUDGET_S, SEED, EXTRA, ...) come from the environment; a task's own KEY=VALUE pairs
# (after the colon) override them for that task only; those values cannot hold spaces (a multi-word EXTRA or
# RL_EXTRA goes in the shared environment).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/gpu_env.sh
export OUT PROTOCOL=curve PHASE=${PHASE:-all}
if [ "${DRY:-0}" = 1 ]; then
  export CUDA_VISIBLE_DEVICES="" RUNS=${RUNS:-$(mktemp -d)}
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  export RUNS=${RUNS:-/tmp/learning-runs}
fi
IFS=';' read -ra SPECS <<< "${TASKS:?TASKS=\"task:KEY=VALUE ...;task:...\"}"
pids=()
for spec in "${SPECS[@]}"; do
  task=${spec%%:*}
  knobs=()
  [ "$spec" != "$task" ] && read -ra knobs <<< "${spec#*:}"
  env TASK="$task" "${knobs[@]}" python3 bench/learning_curve.py > "$OUT/tasks-$task.txt" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for spec in "${SPECS[@]}"; do echo "== ${spec%%:*}"; tail -n 6 "$OUT/tasks-${spec%%:*}.txt"; done
exit $status
