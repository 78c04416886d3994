"""The PPO update with and without its prompts embedded as the rollout embeds them, in one process (A/B).

``ActorCritic.update_from_embeddings`` on (the default under LoRA: ``collate`` builds the prompt embeddings
with ``embed_prompts``, image features from the rollout's cache) and off (the model's forward embeds them
itself, the vision tower on every micro-batch). One loaded policy (the bench's model, LoRA, static decoder),
one recorded rollout (``measure_rollout`` with ``keep``), then ``measure_update`` alternately off / on / off / on
so drift shows; tokens/s, samples/s, peak GiB per row, and the max |log-prob difference| between the two paths
on one micro-batch. ``--profile``: then torch.profiler over one more pass of the default path, its ranges
(collate, forward, backward, optimizer step) and top kernels by self device time in ``update-profile.txt``: where
the update's time goes (bench/RESULTS.md: at 128 envs it ran at ~10% of the card's bf16 rate). The backward's
kernels run on autograd's own threads, which a range may not follow: "all kernels" totals every kernel's time.
``--cast-ab``: the adapters' input casts kept / skipped, alternated; ``--micro-batches``: the default update at
other micro-batch sizes (an update bound by launches, not by tokens, gains from larger ones).

    python bench/gpu_update_embeds.py --out DIR [--profile] [--cast-ab] [--micro-batches 8,16,32]
                                                        # the GPU machine (source bench/gpu_env.sh first)
    python bench/gpu_update_embeds.py --shape tiny --preset numberline-tiny --device cpu --n-envs 4 \\
        --max-new-tokens 8 --out DIR                        # the same code on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_profile_rollout import marked  # noqa: E402  (beside this file)

PROFILE_RANGES = ("collate", "forward", "backward", "optimizer step")


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


def profile_update(policy, cfg, steps, device: str, out: Path, rows: int) -> None:
    """One ``measure_update`` pass (its warm-up minibatch included) under torch.profiler, each phase a range."""
    import contextlib

    import torch

    import vlmppo.rl.update as rl_update
    from vlmppo.benchmark.update import measure_update

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for obj, name, label in ((rl_update, "collate", "collate"), (policy, "score", "forward"),
                                 (torch.Tensor, "backward", "backward"),
                                 (torch.optim.AdamW, "step", "optimizer step")):  # fmt: skip
            stack.enter_context(marked(obj, name, label))
        prof = stack.enter_context(torch.profiler.profile(activities=activities))
        measure_update(policy, cfg, steps, repeats=1)
    wall = time.perf_counter() - start
    events = prof.key_averages()
    ranges = [f"{e.key}: {e.device_time_total / 1e3:.1f} ms device, {e.cpu_time_total / 1e3:.1f} ms cpu, "
              f"{e.count} calls" for e in events if e.key in PROFILE_RANGES]  # fmt: skip
    # Only the kernels themselves: an op's own row carries its kernels' time again, and a range's device-side
    # row spans the kernels inside it (summing every row counted the 1.7 s of kernels of the first GPU run ~3.4 times).
    kernels = [e for e in events if e.device_type.name == "CUDA" and e.key not in PROFILE_RANGES]
    busy = sum(e.self_device_time_total for e in kernels) / 1e3
    ranges.append(f"all kernels: {busy:.1f} ms device, {sum(e.count for e in kernels)} launches")
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = events.table(sort_by=sort, row_limit=rows, max_name_column_width=90)
    text = "\n".join(
        [f"# the update, one pass + warm-up minibatch, profiled: wall {wall:.2f} s", *ranges, "", table]
    )
    (out / "update-profile.txt").write_text(text + "\n")
    print(text[:6000], flush=True)


def row_of(row, **labels) -> dict:
    """One ``measure_update`` result as a report row (printed as it comes)."""
    out = {**labels, "tokens/s": round(row.tokens_per_s, 1), "samples/s": round(row.samples_per_s, 2),
           "collate s": round(row.collate_s, 3), "seconds": round(row.seconds, 2), "peak GiB": row.peak_gib}  # fmt: skip
    print(json.dumps(out), flush=True)
    return out


def cast_ab_rows(policy, cfg, steps, repeats: int) -> list[dict]:
    """The adapters' input casts kept / skipped (``ActorCritic.adapter_casts_skipped``), alternated: skipping
    them is bit-exact (tests/rl/test_adapter_casts.py), so the rows differ in time only."""
    import contextlib

    from vlmppo.benchmark.update import measure_update

    rows = []
    for skipped in (False, True, False, True):
        if not skipped:  # an instance attribute hides the method for these rows
            policy.adapter_casts_skipped = contextlib.nullcontext
        rows.append(row_of(measure_update(policy, cfg, steps, repeats=repeats), **{"casts skipped": skipped}))
        policy.__dict__.pop("adapter_casts_skipped", None)
    return rows


def micro_batch_rows(policy, cfg, steps, repeats: int, sizes: list[int]) -> list[dict]:
    """The default update at each micro-batch size (minibatches of at least one micro-batch): how much of the
    update's time is per launch rather than per token."""
    from vlmppo.benchmark.update import measure_update

    rows = []
    for size in sizes:
        ppo = cfg.ppo.model_copy(
            update={"micro_batch_size": size, "minibatch_size": max(size, cfg.ppo.minibatch_size)}
        )
        sized = cfg.model_copy(update={"ppo": ppo})
        rows.append(row_of(measure_update(policy, sized, steps, repeats=repeats), **{"micro-batch": size}))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-envs", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes over the recorded steps per row")
    ap.add_argument("--profile", action="store_true", help="then profile one pass (update-profile.txt)")
    ap.add_argument("--rows", type=int, default=40, help="kernels in the profile's table")
    ap.add_argument(
        "--cast-ab", action="store_true", help="also alternate the adapters' input casts kept/skipped"
    )
    ap.add_argument(
        "--micro-batches", default="", help="also the default update at these micro-batch sizes: 8,16,32"
    )
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
        report["rows"].append(
            row_of(measure_update(policy, cfg, steps, repeats=args.repeats), **{"from embeddings": on})
        )
    policy.update_from_embeddings = True
    if args.cast_ab:
        report["cast rows"] = cast_ab_rows(policy, cfg, steps, args.repeats)
    if args.micro_batches:
        sizes = [int(m) for m in args.micro_batches.split(",")]
        report["micro-batch rows"] = micro_batch_rows(policy, cfg, steps, args.repeats, sizes)
    report["wall_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "update_embeds.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    if args.profile:
        profile_update(policy, cfg, steps, device, args.out, args.rows)


if __name__ == "__main__":
    main()
