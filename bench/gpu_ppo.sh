#!/usr/bin/env bash
# `vlmppo ppo` itself on a GPU with the Qwen2-VL-2B shape (random bf16 weights) against the rollout bench of
# the same settings, in one call (issue 18). At each env count in N_ENVS:
#   1. the bench's rollout rate (`vlmppo bench`'s measure_rollout: rollout_step + env step, one warm-up
#      step, answers forced to max_new_tokens) on the model the loop loads, in its own process;
#   2. three updates of `vlmppo ppo` in one process (RESUME=1: two, then a third after `--resume auto`, a
#      fresh process that captures its graphs again; a minute more per env count); per update the metrics
#      say the whole rollout rate, the steady one (without the steps that captured CUDA graphs), the value
#      pass, the merged-copy refresh and the peak memory per phase; one checkpoint, at the end;
#   3. bench/ppo_loop_report.py: the loop's steady rate over the bench's, the dry-run's estimate (the same
#      function the dry-run prints, with its terms) against the measured peaks.
# Then one summary table. $OUT gets gpu.txt, ppo-<N>.md per env count and ppo-loop.md (the JSON rows stay in $WORK). Random weights never write a parseable answer (nor an
# end-of-turn token), so every answer runs to max_new_tokens: this measures the loop, not learning.
# DRY=1: the same code path on the CPU with the tiny Qwen2-VL model (a few seconds per step).
# Run from the repository root on the GPU machine (the wheels in .whl/ supply what its image lacks).
set -euo pipefail
if [ "${DRY:-0}" = 1 ]; then
  OUT=${OUT:-bench/out/gpu-ppo-dry}
  mkdir -p "$OUT"
  export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
  PY=${PYTHON:-python3} PRESET=numberline-tiny MODEL=tiny:qwen2-vl NEW=${NEW:-8} DEFAULT_ENVS="2 3" MICRO=${MICRO:-2}
  DEVICE=(run.device=cpu)
  WORK=${WORK:-$OUT}
else
  source bench/gpu_env.sh
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
  PY=python3 PRESET=numberline-qwen NEW=${NEW:-128} DEFAULT_ENVS="32 128"
  MODEL=$(python3 -c "from vlmppo.models.shapes import QWEN2_VL_2B, shape_model_path; print(shape_model_path(QWEN2_VL_2B, device='cuda'))" | tail -1)
  DEVICE=()
  WORK=${WORK:-/tmp/gpu-ppo}  # JSON rows and the run folder: the device tool brings back only a few files of $OUT
fi
mkdir -p "$WORK"
SUMMARIES=()
for N in ${N_ENVS:-$DEFAULT_ENVS}; do
  ARGS=(--preset "$PRESET" "model.path=$MODEL" model.family=qwen2-vl ppo.init_from=null "env.n_envs=$N"
    ppo.n_steps=4 "ppo.minibatch_size=$((N * 2))" ppo.micro_batch_size=${MICRO:-8} ppo.n_epochs=1
    "ppo.max_new_tokens=$NEW" ppo.save_every=100 "run.output_dir=$WORK/runs" "run.name=gpu-ppo-$N" ${DEVICE[@]+"${DEVICE[@]}"} ${EXTRA:-})
  start=$SECONDS
  $PY bench/ppo_loop_report.py bench --out "$WORK/bench-$N.json" -- "${ARGS[@]}" 2>&1 | tail -1
  if [ "${RESUME:-0}" = 1 ]; then
    $PY -m vlmppo ppo "${ARGS[@]}" "ppo.total_env_steps=$((N * 8))" 2>&1 | tail -3
    $PY -m vlmppo ppo "${ARGS[@]}" "ppo.total_env_steps=$((N * 12))" --resume auto 2>&1 | tail -3
  else
    $PY -m vlmppo ppo "${ARGS[@]}" "ppo.total_env_steps=$((N * 12))" 2>&1 | tail -3
  fi
  $PY bench/ppo_loop_report.py report --bench "$WORK/bench-$N.json" --metrics "$WORK/runs/gpu-ppo-$N/ppo/metrics.jsonl" \
    --out "$WORK/ppo-$N.md" -- "${ARGS[@]}"
  [ "$WORK" -ef "$OUT" ] || cp "$WORK/ppo-$N.md" "$OUT/"
  echo "($N envs: $((SECONDS - start)) s)"
  SUMMARIES+=("$WORK/ppo-$N.json")
  rm -rf "$WORK/runs"
done
$PY bench/ppo_loop_report.py summary "${SUMMARIES[@]}" | tee "$OUT/ppo-loop.md"
