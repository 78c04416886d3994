"""How far the rollout's old log-probs are from what the PPO update recomputes, per scoring path (one process).

PPO's first ratio is exp(update's log-prob - rollout's log-prob) at unchanged weights: anything but 0 there is
bias the clip then acts on. One loaded policy (the bench's model, LoRA, merged sampling copy, static decoder),
NumberLine envs, one sampled batch with answers of 30-80 tokens; the same answers scored by

* ``prefill``: answer tokens over the shared prefill's cache (``ActorCritic.shared_prefill``: the rollout's
  default when these figures were first taken, off since);
* ``embeds``: prompt + answer over the shared prompt embeddings (the rollout's default now);
* ``update``: the update's pass (``rl/update.collate``: prompts rebuilt; under LoRA their embeddings built as
  the rollout builds them, else the model's forward runs the vision tower again; gradients on), in micro-batches
  of ``ppo.micro_batch_size``;
* ``update, model's forward``: the same with ``ActorCritic.update_from_embeddings`` off (the vision tower run
  again; the update before it started from the embeddings, and the ``update`` of the first figures);
* ``update split``: the update's micro-batches scored as ``prefill`` does (would a prefill-then-answers
  update agree with the rollout's shared prefill?);
* ``update fp32``: the same with the model in fp32 and no autocast (the reference the bf16 paths round from).

Per pair: mean/max |token log-prob difference| over answer tokens, mean/max |per-answer sum| (what the ratio
of an answer sees, thought and action tokens alike) and the fraction of answers whose ratio exp(sum) leaves
[1 - clip, 1 + clip].

    python bench/gpu_scoring_gap.py --out DIR
    python bench/gpu_scoring_gap.py --shape tiny --preset numberline-tiny --device cpu --n-envs 4 \\
        --max-new-tokens 8 --lengths 3-6 --out DIR     # the same code on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

PAIRS = (
    ("prefill", "update"),
    ("update", "update, model's forward"),
    ("prefill", "update split"),
    ("update", "update split"),
    ("embeds", "update"),
    ("prefill", "update fp32"),
    ("embeds", "update fp32"),
    ("update", "update fp32"),
)


def update_pass(policy, cfg, obs, prompts, sampled, split: bool = False):
    """[B, T] log-probs of ``sampled``'s answers as ``rl/update.micro_loss`` computes them (eval mode: no
    dropout, so only the arithmetic differs), one micro-batch at a time. ``split``: each micro-batch scored
    as the rollout's shared prefill scores (the prompts' forward, then the answers over its cache)."""
    import torch

    from vlmppo.models.prompt_embeds import embed_prompts
    from vlmppo.rl.buffer import Samples
    from vlmppo.rl.update import collate

    p, b = sampled.prompt_len, cfg.ppo.micro_batch_size
    answers = sampled.sequences[:, p:].masked_fill(~sampled.answer_mask, 0).cpu()
    mask = sampled.answer_mask.cpu()
    out = torch.zeros(mask.shape)
    zeros = torch.zeros(len(prompts))
    for start in range(0, len(prompts), b):
        rows = slice(start, start + b)
        width = int(mask[rows].sum(1).max())
        samples = Samples(list(obs[rows]), prompts[rows], answers[rows, :width], mask[rows, :width],
                          mask[rows, :width], mask[rows, :width], mask[rows, :width], None,
                          zeros[rows], zeros[rows], zeros[rows], zeros[rows])  # fmt: skip
        batch, _ = collate(policy, samples)
        if split:
            with torch.no_grad():
                inputs = dict(batch.extra)
                inputs["input_ids"] = batch.sequences[:, : batch.prompt_len]
                inputs["attention_mask"] = batch.attention_mask[:, : batch.prompt_len]
                with policy.autocast():
                    prompt = embed_prompts(policy.loaded.model, inputs)
                batch = dataclasses.replace(batch, prompt=prompt, prefill=policy.prefill(prompt))
                logp, _ = policy.score(batch, temperature=cfg.ppo.temperature)
        else:
            with torch.enable_grad():
                logp, _, _ = policy.score(batch, temperature=cfg.ppo.temperature, return_logits=True)
        out[rows, :width] = logp.detach().float().cpu()
    return out


def gap(a, b, mask, clip: float) -> dict:
    diff = (a - b).masked_fill(~mask, 0.0)
    sums = diff.sum(1).abs()
    outside = ((diff.sum(1).exp() - 1).abs() > clip).float().mean()
    return {"token mean": f"{diff[mask].abs().mean():.2e}", "token max": f"{diff[mask].abs().max():.2e}",
            "answer-sum mean": f"{sums.mean():.2e}", "answer-sum max": f"{sums.max():.2e}",
            "ratio outside clip": f"{outside:.3f}"}  # fmt: skip


def measure(policy, cfg, n_envs: int, with_fp32: bool) -> dict:
    import torch

    from vlmppo.benchmark.rollout import make_bench_env
    from vlmppo.rl.rollout import prompts_for

    vec = make_bench_env(cfg, n_envs)
    obs, infos = vec.reset()
    prompts = prompts_for(vec.adapter, infos)
    vec.close()
    policy.loaded.model.eval()
    temp = cfg.ppo.temperature
    policy.shared_prefill = (
        True  # off by default since these figures: the rollout's scoring over it is measured
    )
    with torch.no_grad():
        sampled = policy.sample(obs, prompts, temperature=temp, max_new_tokens=cfg.ppo.max_new_tokens)
    policy.shared_prefill = False
    assert sampled.prefill is not None, "the static decoder's shared prefill did not run"
    with torch.no_grad():
        logp = {"prefill": policy.score(sampled, temperature=temp)[0].float().cpu()}
        plain = dataclasses.replace(sampled, prefill=None)
        logp["embeds"] = policy.score(plain, temperature=temp)[0].float().cpu()
    logp["update"] = update_pass(policy, cfg, obs, prompts, sampled)
    policy.update_from_embeddings = False
    logp["update, model's forward"] = update_pass(policy, cfg, obs, prompts, sampled)
    policy.update_from_embeddings = True
    logp["update split"] = update_pass(policy, cfg, obs, prompts, sampled, split=True)
    if with_fp32:  # last: the model stays in fp32 afterwards
        import contextlib

        policy.loaded.model.float()
        policy.autocast, policy.sampler = contextlib.nullcontext, None
        logp["update fp32"] = update_pass(policy, cfg, obs, prompts, sampled)
    mask = sampled.answer_mask.cpu()
    result = {"n_envs": n_envs, "answer tokens": int(mask.sum())}
    for a, b in PAIRS:
        if a in logp and b in logp:
            result[f"{a} vs {b}"] = gap(logp[a], logp[b], mask, cfg.ppo.clip_range)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-envs", default="32,128", help="the last also gets the fp32 reference")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--lengths", default="30-80")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from vlmppo.benchmark.options import parse_answer_lengths
    from vlmppo.benchmark.runner import script_policy
    from vlmppo.sysinfo import git_sha

    started = time.time()
    lengths = parse_answer_lengths(args.lengths)
    cfg, policy, device = script_policy(args.preset, args.shape, max_new_tokens=args.max_new_tokens,
                                        device=args.device, answer_lengths=lengths)  # fmt: skip
    counts = [int(n) for n in args.n_envs.split(",")]
    summary = {"git_sha": git_sha(), "shape": args.shape, "preset": args.preset, "device": device,
               "micro_batch": cfg.ppo.micro_batch_size, "clip_range": cfg.ppo.clip_range, "rows": []}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(counts):
        summary["rows"].append(measure(policy, cfg, n, with_fp32=i == len(counts) - 1))
        print(json.dumps(summary["rows"][-1], indent=1), flush=True)
    summary["wall_s"] = round(time.time() - started, 1)
    (args.out / "scoring_gap.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
