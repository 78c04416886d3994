"""The PPO update with and without its prompts embedded as the rollout embeds them, in one process (A/B).

``ActorCritic.update_from_embeddings`` on (the default under LoRA: ``collate`` builds the prompt embeddings
with ``embed_prompts``, image features from the rollout's cache) and off (the model's forward embeds them
itself, the vision tower on every micro-batch). One loaded policy (the bench's model, LoRA, static decoder),
one recorded rollout (``measure_rollout`` with ``keep``), then ``measure_update`` alternately off / on / off / on
so drift shows; tokens/s, samples/s, peak GiB per row, and the max |log-prob difference| between the two paths
on one micro-batch.

    python bench/gpu_update_embeds.py --out DIR             # the GPU machine (source bench/gpu_env.sh first)
    python bench/gpu_update_embeds.py --shape tiny --preset numberline-tiny --device cpu --n-envs 4 \\
        --max-new-tokens 8 --out DIR                        # the same code on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def logprob_gap(policy, cfg, steps) -> float:
    import torch

    from vlmppo.benchmark.update import recorded_buffer
    from vlmppo.rl.update import collate

    buffer = recorded_buffer(cfg, steps, cfg.run.seed)
    samples = buffer.samples(list(range(min(cfg.ppo.micro_batch_size, buffer.size))))
    sampled, _ = collate(policy, samples)
    with torch.no_grad():
        on = policy.score(sampled, temperature=cfg.ppo.temperature)[0]
        off = policy.score(dataclasses.replace(sampled, prompt=None), temperature=cfg.ppo.temperature)[0]
    return float((on - off)[sampled.answer_mask].abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-envs", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the recorded steps per row")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.benchmark.runner import script_policy
    from vlmppo.benchmark.update import measure_update
    from vlmppo.sysinfo import git_sha

    started = time.time()
    cfg, policy, device = script_policy(args.preset, args.shape, max_new_tokens=args.max_new_tokens,
                                        device=args.device)  # fmt: skip
    steps: list = []
    measure_rollout(policy, cfg, args.n_envs, repeats=2, keep=steps)
    report = {"git_sha": git_sha(), "shape": args.shape, "device": device, "n_envs": args.n_envs,
              "recorded steps": len(steps), "embeddings constant": policy.prompt_embeddings_constant(),
              "max |log-prob on - off|": logprob_gap(policy, cfg, steps), "rows": []}  # fmt: skip
    for on in (False, True, False, True):
        policy.update_from_embeddings = on
        row = measure_update(policy, cfg, steps, repeats=args.repeats)
        report["rows"].append({"from embeddings": on, "tokens/s": round(row.tokens_per_s, 1),
                               "samples/s": round(row.samples_per_s, 2), "collate s": round(row.collate_s, 3),
                               "seconds": round(row.seconds, 2), "peak GiB": row.peak_gib})  # fmt: skip
        print(json.dumps(report["rows"][-1]), flush=True)
    policy.update_from_embeddings = True
    report["wall_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "update_embeds.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()
