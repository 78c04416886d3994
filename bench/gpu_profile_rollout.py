"""Where a rollout step's GPU time goes (issue 18): torch.profiler over one PPO rollout step, by kernel.

One process, the Qwen2-VL-2B shape (random bf16 weights, the bench's LoRA and merged sampling copy), the
static decoder, answers forced to ``--max-new-tokens``. After one untimed step, it profiles one step with
the decode steps replayed as CUDA graphs (the product's path: what the step costs) and one with them run
eagerly (kernel names of a decode step), each range (sample, generate, score) marked. Writes every table (top
kernels by self device time, the ranges' totals) into ONE file, ``--out``/profile-rollout.txt (the GPU tool brings
back at most 8 files per call).

    python bench/gpu_profile_rollout.py --n-envs 128 --out $OUT                 # on the GPU machine
    python bench/gpu_profile_rollout.py --shape tiny --preset numberline-tiny --n-envs 4 \
        --max-new-tokens 8 --out /tmp/prof                                         # CPU check of the code path
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path


@contextlib.contextmanager
def marked(obj, name: str, label: str):
    """Wrap ``obj.name`` in a profiler range ``label`` for the block."""
    import torch

    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        setattr(obj, name, original)


def profile_step(policy, cfg, n_envs: int, device: str):
    import torch

    from vlmppo.benchmark.rollout import make_bench_env
    from vlmppo.rl.rollout import rollout_step

    vec = make_bench_env(cfg, n_envs)
    obs, infos = vec.reset()
    step = rollout_step(policy, vec, obs, infos, cfg)  # warm-up: graphs, allocator
    obs, _, _, _, infos = vec.step(step.actions)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        rollout_step(policy, vec, obs, infos, cfg)
        if device == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    vec.close()
    return prof, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b")
    ap.add_argument("--n-envs", default="128")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rows", type=int, default=45)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from vlmppo.benchmark.runner import script_policy
    from vlmppo.models.generation import static_decoder_for

    cfg, policy, device = script_policy(args.preset, args.shape, max_new_tokens=args.max_new_tokens)
    sampler = policy.sampler.model if policy.sampler is not None else policy.loaded.model
    decoder = static_decoder_for(sampler, compile=False)
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile-rollout.txt").write_text("")
    graphs = decoder.use_graphs
    for n in [int(x) for x in args.n_envs.split(",")]:
        for mode, use_graphs in (("graphs", graphs), ("eager", False)):
            decoder.use_graphs = use_graphs
            with marked(policy, "sample", "sample"), marked(policy, "score", "score"), \
                    marked(decoder, "generate", "generate"):  # fmt: skip
                prof, wall = profile_step(policy, cfg, n, device)
            events = prof.key_averages()
            ranges = [f"{e.key}: {e.device_time_total / 1e3:.1f} ms device, {e.cpu_time_total / 1e3:.1f} ms cpu"
                      for e in events if e.key in ("sample", "generate", "score")]  # fmt: skip
            text = "\n".join([f"# {n} envs, decode {mode}, one rollout step: wall {wall:.3f} s", *ranges, "",
                              events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=90)])  # fmt: skip
            # Appended after each profile: a call cut short keeps what ran.
            with open(args.out / "profile-rollout.txt", "a") as tables:
                tables.write(text + "\n\n")
            print(text[:6000], flush=True)
    decoder.use_graphs = graphs


if __name__ == "__main__":
    main()
