"""GAE vs GRPO vs GiGPO on the CPU probes, side by side: updates, wall and CPU time, greedy success.

Usage:
    OMP_NUM_THREADS=1 python bench/critic_free.py [--out DIR] [--json FILE] [--only color,chain]
        [--advantages gae,grpo,gigpo] [--updates 30] [--chain-updates 20] [--dry]

- color: probe/Color from an image-blind SFT checkpoint (bench/probe_learning.py's recipe: the format, ≈50%
  success), then PPO with each advantage estimator; greedy success on fresh seeds before and after.
- chain: probe/Color with ``env.kwargs.steps=3`` (three colour frames per episode, +1 for each right answer;
  the seed fixes the sequence, so a group's members meet the same states): where step-level credit should
  matter. Greedy ``solved`` (all three right) and mean return.

Each row: the first update from which the rollout's success (color) or mean return / 3 (chain) stays ≥ 0.95
for three updates, the seconds of PPO (wall and this process's CPU time: the CPU is shared, so compare the
CPU seconds) and the greedy results. ``--dry`` runs every path at a toy size (2 updates, 8 eval episodes).
Results of a run: docs/advantages.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.probe_learning import GROUP_OVERRIDES, _cfg, _curve, format_only  # noqa: E402


def first_sustained(curve: list, threshold: float, run: int = 3) -> int | None:
    """The first update (1-based) from which ``run`` values in a row are ≥ ``threshold``."""
    for start in range(len(curve) - run + 1):
        if all(value is not None and value >= threshold for value in curve[start : start + run]):
            return start + 1
    return None


def greedy(cfg, ckpt: str, episodes: int) -> dict:
    from vlmppo.eval.runner import evaluate

    ecfg = cfg.model_copy(deep=True)
    ecfg.eval.ckpt, ecfg.eval.episodes, ecfg.eval.seeds = ckpt, episodes, [10_000]
    ecfg.eval.greedy, ecfg.eval.trajectories = True, 0
    m = evaluate(ecfg).metrics
    return {key: m.get(key) for key in ("success_rate", "solved_rate", "return_mean", "invalid_action_rate")}


def probe_run(
    out: Path, advantage: str, steps: int, sft_steps: int, updates: int, episodes: int, seed: int = 0
) -> dict:
    """Image-blind SFT on probe/Color (``steps`` frames per episode), then PPO with ``advantage``."""
    from vlmppo.config import run_dir
    from vlmppo.data.collect import collect
    from vlmppo.data.label import label
    from vlmppo.data.preprocess import preprocess
    from vlmppo.rl import train_ppo
    from vlmppo.sft import train_sft

    n_steps = 8 if steps == 1 else 12  # whole rounds of 1 or 3 steps; 4 envs x 12 = 48 = 3 minibatches of 16
    cfg = _cfg(
        "probe-color-tiny",
        out / f"{advantage}-steps{steps}-seed{seed}",
        f"run.seed={seed}",
        *GROUP_OVERRIDES[advantage],
        *([f"env.kwargs.steps={steps}"] if steps > 1 else []),
        f"sft.max_steps={sft_steps}",
        "ppo.init_from=sft",
        "env.n_envs=4",
        f"ppo.n_steps={n_steps}",
        f"ppo.total_env_steps={updates * 4 * n_steps}",
    )
    collect(cfg), label(cfg), preprocess(cfg)
    format_only(run_dir(cfg) / "data" / "train.jsonl")
    train_sft(cfg)
    before = greedy(cfg, "sft", episodes)
    wall, cpu = time.perf_counter(), time.process_time()
    train_ppo(cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = greedy(cfg, "ppo", episodes)
    if steps == 1:
        curve = _curve(cfg, "rollout/success_rate")
    else:
        curve = [None if r is None else round(r / steps, 4) for r in _curve(cfg, "rollout/ep_return_mean")]
    return {
        "probe": "color" if steps == 1 else f"color-steps{steps}",
        "advantage": advantage,
        "seed": seed,
        "updates": updates,
        "reached_0.95_at_update": first_sustained(curve, 0.95),
        "curve_mean": round(sum(v or 0.0 for v in curve) / max(1, len(curve)), 3),  # area under the curve
        "seconds_ppo_wall": round(wall, 1),
        "seconds_ppo_cpu": round(cpu, 1),
        "greedy_before": before,
        "greedy_after": after,
        "curve": curve,
        "zero_spread_frac": _curve(cfg, "rollout/group_zero_spread_frac") if advantage != "gae" else None,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| probe | advantage | seed | updates | reached 0.95 at | curve mean | PPO wall s | PPO CPU s | greedy "
        "success (solved) before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, a = r["greedy_before"], r["greedy_after"]
        lines.append(
            f"| {r['probe']} | {r['advantage']} | {r['seed']} | {r['updates']} | {r['reached_0.95_at_update']} | "
            f"{r['curve_mean']} | {r['seconds_ppo_wall']} | {r['seconds_ppo_cpu']} | {b['success_rate']:.2f} ({b['solved_rate']:.2f}) → "
            f"{a['success_rate']:.2f} ({a['solved_rate']:.2f}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/vlmppo-bench-critic-free")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default="color,chain")
    ap.add_argument("--advantages", default="gae,grpo,gigpo")
    ap.add_argument("--chain-advantages", default="grpo,gigpo")
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--chain-updates", type=int, default=20)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--seeds", default="0", help="run.seed values: each run is repeated for each.")
    ap.add_argument("--dry", action="store_true", help="Every path at a toy size.")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.dry:
        args.updates = args.chain_updates = 2
        args.sft_steps, args.eval_episodes = 10, 8
    runs = []
    if "chain" in args.only.split(","):
        runs += [(a, 3, args.chain_updates) for a in args.chain_advantages.split(",")]
    if "color" in args.only.split(","):
        runs += [(a, 1, args.updates) for a in args.advantages.split(",")]
    results = []
    runs = [(*run, int(seed)) for seed in args.seeds.split(",") for run in runs]
    for advantage, steps, updates, seed in runs:
        out = Path(args.out)
        results.append(probe_run(out, advantage, steps, args.sft_steps, updates, args.eval_episodes, seed))
        print(json.dumps(results[-1]), flush=True)
        if args.json:  # after every run: a long bench that is stopped keeps what it measured
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
