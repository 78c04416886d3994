"""Measure each env's expert: success rate over seeded episodes (default 200 per env).

Usage:
    python bench/expert_success.py [--episodes 200] [--seed 0] [--env ID ...]

Episode k of an env is reset with seed ``seed + k``. "success" is RL4VLM's (return > 0), "solved" the
task's own goal. "abstained" counts episodes where the expert said it could not act (e.g. an unsolvable
Points24 deal) and the episode was stopped as a failure. The numbers are written into docs/envs.md.
"""

from __future__ import annotations

import argparse
import math
import time

import vlmppo.envs as envs

DEFAULT_ENVS = [
    ("gym_cards/NumberLine-v0", {}),
    ("gym_cards/Blackjack-v0", {}),
    ("gym_cards/EZPoints-v0", {}),
    ("gym_cards/EZPoints-v0", {"uniform_deal": True, "exact_arithmetic": True, "refuse_unavailable": True}),
    ("gym_cards/Points24-v0", {}),
    ("gym_cards/Points24-v0", {"exact_arithmetic": True}),
    ("gym_cards/Points24-v0", {"solvable_only": True, "exact_arithmetic": True, "refuse_unavailable": True}),
    ("MiniGrid-DoorKey-6x6-v0", {}),
    ("MiniGrid-Empty-Random-6x6-v0", {}),
    ("MiniGrid-Empty-5x5-v0", {}),
    ("MiniGrid-Empty-8x8-v0", {}),
    ("MiniGrid-MultiRoom-N2-S4-v0", {}),
    ("probe/Constant-v0", {}),
    ("probe/Color-v0", {}),
    ("probe/TwoStep-v0", {}),
]


def run(env_id: str, options: dict, episodes: int, seed: int) -> dict:
    env = envs.make_env(env_id, **options)
    adapter = envs.get_adapter(env_id)
    wins = solved = abstained = steps_total = 0
    returns = 0.0
    start = time.perf_counter()
    for k in range(episodes):
        _, info = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            choice = adapter.expert(env, info)
            if choice.index is None:
                abstained += 1
                break
            _, reward, terminated, truncated, info = env.step(adapter.to_env_action(choice.index))
            total += reward
            steps_total += 1
            done = terminated or truncated
        wins += done and envs.is_success(total)
        solved += done and adapter.is_solved(total, info)
        returns += total
    rate = wins / episodes
    return {
        "env": env_id + "".join(f" {k}={v}" for k, v in options.items()),
        "success": rate,
        "solved": solved / episodes,
        "ci95": 1.96 * math.sqrt(rate * (1 - rate) / episodes),
        "return": returns / episodes,
        "length": steps_total / episodes,
        "abstained": abstained,
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--env", action="append", help="only these ids (repeatable)")
    args = parser.parse_args()
    todo = [(i, o) for i, o in DEFAULT_ENVS if not args.env or i in args.env]
    print("| env | episodes | success | ±95% | solved | mean return | mean length | abstained | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for env_id, options in todo:
        r = run(env_id, options, args.episodes, args.seed)
        print(
            f"| {r['env']} | {args.episodes} | {r['success']:.1%} | {r['ci95']:.1%} | {r['solved']:.1%} "
            f"| {r['return']:.3f} "
            f"| {r['length']:.1f} | {r['abstained']} | {r['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
