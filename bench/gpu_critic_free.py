"""GAE vs GRPO vs GiGPO on a GPU with the Qwen2-VL-2B shape: peak memory and time per update, side by side.

Usage (from the repository root, on the GPU machine; the wheels in .whl/ supply what its image lacks):
    source bench/gpu_env.sh && python3 bench/gpu_critic_free.py     # ~4-6 minutes on an H200
    DRY=1 OUT=/tmp/out python bench/gpu_critic_free.py              # the same code path on the CPU, tiny model

For each estimator, in its own process (so that no other run's memory counts): ``vlmppo.rl.train_ppo`` for 2 updates of 32 envs x 4 steps (random bf16 weights: every answer
runs to max_new_tokens and acts at random, so this measures the loop, not learning), then the run's
``sys/gpu_mem_peak_gb``, rollout and update seconds, and the dry-run's estimate. Writes
``$OUT/critic_free_gpu.md`` and ``.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

DRY = os.environ.get("DRY") == "1"
OUT = Path(os.environ.get("OUT", "bench/out"))
ADVANTAGES = {"gae": [], "grpo": ["ppo.advantage=grpo", "ppo.group_size=8"],
              "gigpo": ["ppo.advantage=gigpo", "ppo.group_size=8"]}  # fmt: skip


def overrides(advantage: str) -> list[str]:
    if DRY:
        model = ["model.path=tiny:qwen2-vl", "run.device=cpu", "env.n_envs=8", "ppo.max_new_tokens=8"]
        model += ["ppo.minibatch_size=16", "ppo.micro_batch_size=4"]
    else:
        from vlmppo.models.shapes import QWEN2_VL_2B, shape_model_path

        path = shape_model_path(QWEN2_VL_2B, device="cuda")
        model = [f"model.path={path}", "env.n_envs=32", "ppo.max_new_tokens=128"]
        model += ["ppo.minibatch_size=64", "ppo.micro_batch_size=8"]
    n_envs = int(next(o for o in model if o.startswith("env.n_envs=")).split("=")[1])
    return [
        *model,
        "model.family=qwen2-vl",
        "ppo.init_from=null",
        "ppo.n_steps=4",
        "ppo.n_epochs=1",
        "ppo.save_every=100",
        f"ppo.total_env_steps={n_envs * 8}",
        f"run.output_dir={OUT / 'runs'}",
        f"run.name=critic-free-{advantage}",
        *ADVANTAGES[advantage],
    ]


def measure(advantage: str) -> dict:
    import torch

    from vlmppo.config import load_config
    from vlmppo.memory import estimate_ppo_memory
    from vlmppo.rl import train_ppo

    cfg = load_config("numberline-qwen", overrides=overrides(advantage))
    estimate = estimate_ppo_memory(cfg)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_ppo(cfg)
    rows = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    return {
        "advantage": advantage,
        "updates": result.updates,
        "wall_s": round(time.perf_counter() - started, 1),
        "gpu_mem_peak_gb": last.get("sys/gpu_mem_peak_gb"),
        "estimate_peak_gb": round(estimate.peak_gb, 3) if estimate else None,
        "estimate_trainable_state_gb": round(estimate.trainable_state_gb, 4) if estimate else None,
        "rollout_s": [round(r["time/rollout_s"], 2) for r in rows],
        "update_s": [round(r["time/update_s"], 2) for r in rows],
    }


def main() -> int:
    import subprocess

    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2])), flush=True)
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for advantage in ADVANTAGES:
        done = subprocess.run(
            [sys.executable, __file__, "--one", advantage], capture_output=True, text=True, check=False
        )
        if done.returncode:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    keys = ["advantage", "updates", "wall_s", "gpu_mem_peak_gb", "estimate_peak_gb", "estimate_trainable_state_gb",
            "rollout_s", "update_s"]  # fmt: skip
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in results]
    (OUT / "critic_free_gpu.md").write_text("\n".join(lines) + "\n")
    (OUT / "critic_free_gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
