"""SFT on the probe Color env: expert data -> SFT -> greedy action accuracy, and SFT steps/s on this machine.

Usage:
    OMP_NUM_THREADS=1 python bench/sft_color.py [--steps 100] [--episodes 96] [--out /tmp/sft-color]
        [--preset probe-color-tiny] [key=value ...]

Runs collect (expert) -> label (expert) -> preprocess (no dedupe: Color has two distinct frames) -> sft with
the preset's SFT settings, then prints optimizer steps/s, samples/s, the final eval loss and the greedy
action accuracy on the val episodes, plus the greedy success rate on fresh env episodes (seeds never
collected). Extra arguments are config overrides. Tiny models want one thread per process
(OMP_NUM_THREADS=1): torch's default thread pool makes them 40-100x slower on 2 shared cores.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def greedy_env_success(cfg, checkpoint: str, episodes: int, seed: int) -> float:
    """Greedy success over ``episodes`` one-step Color episodes with seeds ``seed + k``, one batched generate."""
    import numpy as np

    from vlmppo.checkpoints import load_policy_for_inference
    from vlmppo.envs import adapter_from_config, make_env_from_config

    adapter = adapter_from_config(cfg.env)
    policy = load_policy_for_inference(cfg, checkpoint)
    frames, infos, envs = [], [], []
    for k in range(episodes):
        env = make_env_from_config(cfg.env)
        frame, info = env.reset(seed=seed + k)
        frames.append(frame), infos.append(info), envs.append(env)
    texts = policy.generate_text(frames, [adapter.prompt(i) for i in infos], temperature=0, max_new_tokens=48)
    rng = np.random.default_rng(0)
    wins = 0
    for env, text in zip(envs, texts, strict=True):
        parsed = adapter.parse(text, rng)
        _, reward, *_ = env.step(adapter.to_env_action(parsed.index))
        wins += int(not parsed.invalid and reward > 0)
    return wins / episodes


def main() -> None:
    import torch

    from vlmppo.config import load_config
    from vlmppo.data.collect import collect
    from vlmppo.data.label import label
    from vlmppo.data.preprocess import preprocess
    from vlmppo.sft import train_sft

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="probe-color-tiny")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--episodes", type=int, default=96)
    ap.add_argument("--out", default="/tmp/vlmppo-bench-sft-color")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(
        args.preset,
        overrides=[
            f"run.output_dir={args.out}",
            f"run.name=sft-color-{int(time.time())}",
            f"collect.episodes={args.episodes}",
            "preprocess.dedupe=false",
            "preprocess.val_fraction=0.25",
            f"sft.max_steps={args.steps}",
            *args.overrides,
        ],
    )
    t0 = time.perf_counter()
    collect(cfg), label(cfg), preprocess(cfg)
    t1 = time.perf_counter()
    result = train_sft(cfg)
    t2 = time.perf_counter()
    success = greedy_env_success(cfg, str(result.final), 100, seed=10_000)
    print(
        f"preset {args.preset}: {result.steps} optimizer steps of batch {cfg.sft.batch_size} "
        f"x {cfg.sft.grad_accum} accumulation, lr {cfg.sft.lr:g}"
    )
    print(
        f"data (collect+label+preprocess): {t1 - t0:.1f} s; sft run (load, train, eval, save): {t2 - t1:.1f} s"
    )
    print(
        f"SFT speed: {result.steps_per_s:.2f} optimizer steps/s, {result.samples_per_s:.1f} samples/s "
        f"(torch threads: {torch.get_num_threads()})"
    )
    print(f"final eval loss {result.eval_loss:.4f}, token accuracy {result.eval_token_acc:.1%}")
    print(
        f"greedy action accuracy on val: {result.action_acc:.1%} of {result.n_action_eval} "
        f"(unparseable {result.unparseable_rate:.1%})"
    )
    print(f"greedy success on 100 fresh episodes: {success:.1%}")


if __name__ == "__main__":
    main()
