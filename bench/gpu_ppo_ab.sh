#!/usr/bin/env bash
# A/B of the whole `vlmppo ppo` loop on one GPU: this tree's src/ against another source tree in .ab/src
# (e.g. `mkdir .ab && git archive REV src presets | tar -x -C .ab`), same config, same card, one after the other.
# Qwen2-VL-2B shape with random bf16 weights, as bench/gpu_ppo.sh; prints per-update time/update_s and env
# steps/s of both and their means over updates 2..N (update 1 pays the warm-up). Carry .ab and .whl.
set -euo pipefail
source bench/gpu_env.sh
N_ENVS=${N_ENVS:-32} UPDATES=${UPDATES:-5}
for side in B A; do  # B (the other tree) first, so A does not profit from a warmer card
  src=$PWD/src; [ "$side" = B ] && src=$PWD/.ab/src
  export PYTHONPATH=$src:/tmp/site  # gpu_env.sh put this tree's src/ first
  MODEL=$(python3 -c "from vlmppo.models.shapes import QWEN2_VL_2B, shape_model_path; print(shape_model_path(QWEN2_VL_2B, device='cuda'))" | tail -1)
  python3 -m vlmppo ppo --preset numberline-qwen "model.path=$MODEL" model.family=qwen2-vl ppo.init_from=null \
    "env.n_envs=$N_ENVS" ppo.n_steps=4 ppo.minibatch_size=64 ppo.micro_batch_size=${MICRO:-8} ppo.n_epochs=2 \
    ppo.max_new_tokens=128 ppo.save_every=1000 "ppo.total_env_steps=$((N_ENVS * 4 * UPDATES))" \
    "run.output_dir=$OUT/runs-$side" run.name=ab 2>&1 | tail -2
  cp "$OUT/runs-$side/ab/ppo/metrics.jsonl" "$OUT/metrics-$side.jsonl"
  rm -rf "$OUT/runs-$side"
done
python3 - "$OUT" <<'PY' | tee "$OUT/ab.md"
import json, sys
rows = {s: [json.loads(l) for l in open(f"{sys.argv[1]}/metrics-{s}.jsonl")] for s in "AB"}
print("| tree | update_s per update | mean update_s (2..N) | mean env steps/s (2..N) | optimizer steps | peak GiB |")
print("|---|---|---|---|---|---|")
for s, name in (("A", "this tree"), ("B", ".ab")):
    r = rows[s]
    mean = lambda k: sum(x[k] for x in r[1:]) / max(len(r) - 1, 1)
    print(f"| {name} | {', '.join(f'{x['time/update_s']:.2f}' for x in r)} | {mean('time/update_s'):.2f} | "
          f"{mean('time/env_steps_per_s'):.2f} | {r[-1]['train/optimizer_steps']} | {r[-1].get('sys/gpu_mem_peak_gb', 0):.1f} |")
PY
