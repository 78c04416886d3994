#!/usr/bin/env bash
# `vlmppo ppo` itself on a GPU with the Qwen2-VL-2B shape (random bf16 weights), at each env count in
# N_ENVS: two updates, then a third after `--resume auto`; prints the per-update metrics (env steps/s,
# generated tokens/s, rollout and update time, peak GPU memory) beside the dry-run's memory estimate.
# Random weights never write a parseable answer (nor an end-of-turn token), so every answer runs to
# max_new_tokens and every action is a random legal one: this measures the loop, not learning. Run from the repository root on the GPU machine (the wheels in .whl/ supply what its
# image lacks).
set -euo pipefail
source bench/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
MODEL=$(python3 -c "from vlmppo.models.shapes import QWEN2_VL_2B, shape_model_path; print(shape_model_path(QWEN2_VL_2B, device='cuda'))" | tail -1)
for N in ${N_ENVS:-32 128}; do
  ARGS=(--preset numberline-qwen "model.path=$MODEL" model.family=qwen2-vl ppo.init_from=null "env.n_envs=$N"
    ppo.n_steps=4 "ppo.minibatch_size=$((N * 2))" ppo.micro_batch_size=${MICRO:-8} ppo.n_epochs=1
    ppo.max_new_tokens=128 ppo.save_every=1 "run.output_dir=$OUT/runs" "run.name=gpu-ppo-$N" ${EXTRA:-})
  python3 -m vlmppo ppo "${ARGS[@]}" "ppo.total_env_steps=$((N * 8))" --dry-run 2>&1 | grep -A3 "est. GPU memory" | tee "$OUT/estimate-$N.txt"
  python3 -m vlmppo ppo "${ARGS[@]}" "ppo.total_env_steps=$((N * 8))" 2>&1 | tail -3 | tee "$OUT/log-$N.txt"
  python3 -m vlmppo ppo "${ARGS[@]}" "ppo.total_env_steps=$((N * 12))" --resume auto 2>&1 | tail -3 | tee -a "$OUT/log-$N.txt"
  python3 - "$OUT/runs/gpu-ppo-$N/ppo/metrics.jsonl" <<'PY' | tee "$OUT/ppo-$N.md"
import json, sys
keys = ["update", "env_steps", "time/env_steps_per_s", "time/gen_tokens_per_s", "time/rollout_s", "time/update_s",
        "train/optimizer_steps", "sys/gpu_mem_peak_gb"]
print("| " + " | ".join(keys) + " |")
print("|" + "---|" * len(keys))
for line in open(sys.argv[1]):
    m = json.loads(line)
    print("| " + " | ".join(f"{m.get(k):.3g}" if isinstance(m.get(k), float) else str(m.get(k)) for k in keys) + " |")
PY
  rm -rf "$OUT/runs"
done
