"""PPO learns on the probe envs: the value on Constant and TwoStep, the policy on Color.

Usage:
    OMP_NUM_THREADS=1 python bench/probe_learning.py [--out DIR] [--json FILE] [--only constant,twostep,color]

- Constant (one step, reward +1): the value of the frame must reach 1.0 (±0.05).
- TwoStep (reward only at step 2, γ = ppo.gamma): V(step 1) must reach γ and V(step 2) 1.0 (±0.05) —
  discounting and bootstrapping through GAE.
- Color (red → "left", blue → "right"): SFT first on expert answers made *image-blind* (half of each
  colour's examples carry the other colour's answer), so the checkpoint knows the answer format but not
  the colour rule (≈50% success, 0% unparseable); PPO from that checkpoint must reach ≥95% greedy
  success, and its greedy answers must still end cleanly (nothing after the closing brace).

Values are read from the saved checkpoint (adapter + value head loaded back through the resume path);
greedy success comes from `vlmppo eval`'s harness on seeds never trained on. Prints a table and the
per-update curve; `--json` writes everything. The slow test tests/rl/test_probe_learning.py runs this.
`--extra` adds overrides to Color's run, e.g. the small presets' full fine-tuning:
`--extra "model.lora=null model.dtype=float32 ppo.lr=1e-4 ppo.eval_every=5 ppo.eval_episodes=16"`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

TOLERANCE = 0.05


def _cfg(preset: str, out: Path, *overrides: str):
    from vlmppo.config import load_config

    return load_config(preset, overrides=[f"run.output_dir={out}", *overrides])


def _values_of_frames(cfg, frames: list, infos: list) -> list[float]:
    """V(s) from the final PPO checkpoint, loaded back the way --resume loads it."""
    from vlmppo.checkpoints import latest_checkpoint
    from vlmppo.config import run_dir
    from vlmppo.envs import adapter_from_config
    from vlmppo.rl.rollout import state_values
    from vlmppo.rl.startup import build_policy

    ckpt = latest_checkpoint(run_dir(cfg) / "ppo" / "checkpoints")
    policy = build_policy(cfg, "cpu", resume_from=ckpt)
    return state_values(policy, frames, infos, adapter_from_config(cfg.env)).tolist()


def _curve(cfg, key: str) -> list:
    from vlmppo.config import run_dir

    rows = [json.loads(x) for x in (run_dir(cfg) / "ppo" / "metrics.jsonl").read_text().splitlines()]
    return [None if r.get(key) is None else round(r[key], 4) for r in rows]


def value_probe(env: str, out: Path, updates: int) -> dict:
    """Train PPO on probe/Constant or probe/TwoStep; the values of each step's frame vs the discounted return."""
    from vlmppo.envs import make_env_from_config
    from vlmppo.rl import train_ppo

    preset = {"constant": "probe-constant-tiny", "twostep": "probe-twostep-tiny"}[env]
    cfg = _cfg(preset, out, f"ppo.total_env_steps={updates * 32}", "env.n_envs=4", "ppo.n_steps=8")
    t0 = time.perf_counter()
    train_ppo(cfg)
    seconds = time.perf_counter() - t0
    e = make_env_from_config(cfg.env)
    frame, info = e.reset(seed=0)
    frames, infos = [frame], [info]
    if env == "twostep":
        frame, _, _, _, info = e.step(0)
        frames.append(frame), infos.append(info)
    values = _values_of_frames(cfg, frames, infos)
    gamma = cfg.ppo.gamma
    targets = [1.0] if env == "constant" else [gamma, 1.0]
    return {
        "probe": env,
        "updates": updates,
        "seconds": round(seconds, 1),
        "values": [round(v, 4) for v in values],
        "targets": targets,
        "passed": all(abs(v - t) <= TOLERANCE for v, t in zip(values, targets, strict=True)),
        "curve_value_mean": _curve(cfg, "rollout/value_mean"),
    }


def format_only(train_file: Path) -> None:
    """Make the SFT data image-blind: for each colour, give half of its examples the other colour's answer.

    The answers keep the exact format (and each answer's thoughts still match its action), but the frame no
    longer predicts the action: P(left | red) = P(left | blue) = 1/2, so the SFT model learns the format
    and ~50% success, and only RL can teach it to look at the colour.
    """
    rows = [json.loads(x) for x in train_file.read_text().splitlines()]
    by_action: dict[str, list[dict]] = {}
    for r in rows:
        by_action.setdefault(r["action"], []).append(r)
    (a, group_a), (b, group_b) = sorted(by_action.items())
    answer_of = {a: group_a[0]["messages"][-1], b: group_b[0]["messages"][-1]}
    for other, group in ((b, group_a), (a, group_b)):
        for r in group[::2]:  # every other example of this colour gets the other colour's answer
            r["messages"][-1], r["action"] = answer_of[other], other
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))


def greedy_success(cfg, ckpt: str, episodes: int, seed: int) -> dict:
    from vlmppo.eval.runner import evaluate

    ecfg = cfg.model_copy(deep=True)
    ecfg.eval.ckpt, ecfg.eval.episodes, ecfg.eval.seeds = ckpt, episodes, [seed]
    ecfg.eval.greedy, ecfg.eval.trajectories = True, 0
    m = evaluate(ecfg).metrics
    return {k: m.get(k) for k in ("success_rate", "invalid_action_rate", "success_ci95")} | {"dir": ckpt}


def clean_endings(cfg, ckpt: str, episodes: int, seed: int) -> float:
    """Share of greedy answers that end with the closing brace (nothing after it) — the end-of-turn
    token stays likely after RL, or answers would run on to max_new_tokens."""
    from vlmppo.checkpoints import load_policy_for_inference
    from vlmppo.envs import adapter_from_config, make_env_from_config

    adapter, gen = adapter_from_config(cfg.env), load_policy_for_inference(cfg, ckpt)
    frames, prompts = [], []
    for k in range(episodes):
        frame, info = make_env_from_config(cfg.env).reset(seed=seed + k)
        frames.append(frame), prompts.append(adapter.prompt(info))
    texts = gen.generate_text(frames, prompts, temperature=0, max_new_tokens=cfg.ppo.max_new_tokens)
    return sum(t.strip().endswith("}") for t in texts) / len(texts)


GROUP_OVERRIDES = {  # Color's 4 envs as one group of 4 (every episode is one step: 8 rounds per rollout)
    "gae": [],
    "grpo": ["ppo.advantage=grpo", "ppo.group_size=4"],
    "gigpo": ["ppo.advantage=gigpo", "ppo.group_size=4"],
}


def color_probe(
    out: Path, sft_steps: int, updates: int, eval_episodes: int, advantage: str = "gae", extra: tuple = ()
) -> dict:
    from vlmppo.config import run_dir
    from vlmppo.data.collect import collect
    from vlmppo.data.label import label
    from vlmppo.data.preprocess import preprocess
    from vlmppo.rl import train_ppo
    from vlmppo.sft import train_sft

    cfg = _cfg(
        "probe-color-tiny",
        out / advantage if advantage != "gae" else out,
        *GROUP_OVERRIDES[advantage],
        f"sft.max_steps={sft_steps}",
        "ppo.init_from=sft",
        f"ppo.total_env_steps={updates * 32}",
        "env.n_envs=4",
        "ppo.n_steps=8",
        *extra,
    )
    t0 = time.perf_counter()
    collect(cfg), label(cfg), preprocess(cfg)
    format_only(run_dir(cfg) / "data" / "train.jsonl")
    train_sft(cfg)
    t_sft = time.perf_counter()
    before = greedy_success(cfg, "sft", eval_episodes, seed=10_000)
    from vlmppo.eval.live import greedy_eval

    train_ppo(cfg, evaluate=greedy_eval)  # used with ppo.eval_every (e.g. through --extra)
    t_ppo = time.perf_counter()
    after = greedy_success(cfg, "ppo", eval_episodes, seed=10_000)
    endings = clean_endings(cfg, "ppo", 32, seed=20_000)
    return {
        "probe": "color",
        "advantage": advantage,
        "overrides": list(extra),
        "sft_steps": sft_steps,
        "updates": updates,
        "seconds_sft": round(t_sft - t0, 1),
        "seconds_ppo": round(t_ppo - t_sft, 1),
        "greedy_success_sft": before["success_rate"],
        "greedy_success_ppo": after["success_rate"],
        "greedy_success_ppo_ci95": after["success_ci95"],
        "invalid_rate_ppo": after["invalid_action_rate"],
        "clean_endings_ppo": endings,
        "passed": after["success_rate"] >= 0.95 and endings >= 0.95,
        "curve_success": _curve(cfg, "rollout/success_rate"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/vlmppo-bench-probes")
    ap.add_argument("--json", default=None, help="Also write the results here.")
    ap.add_argument("--only", default="constant,twostep,color")
    ap.add_argument("--value-updates", type=int, default=16)
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--color-updates", type=int, default=30)
    ap.add_argument("--eval-episodes", type=int, default=64)
    ap.add_argument("--advantage", default="gae", choices=sorted(GROUP_OVERRIDES), help="Color's estimator.")
    ap.add_argument("--extra", default="", help="Color: more overrides, e.g. 'model.lora=null ppo.lr=1e-4'.")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    results = []
    for probe in args.only.split(","):
        if probe in ("constant", "twostep"):
            results.append(value_probe(probe, out, args.value_updates))
        elif probe == "color":
            extra = tuple(shlex.split(args.extra))
            results.append(
                color_probe(
                    out, args.sft_steps, args.color_updates, args.eval_episodes, args.advantage, extra
                )
            )
        else:
            raise SystemExit(f"unknown probe {probe!r}: use constant, twostep, color")
        print(json.dumps(results[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
