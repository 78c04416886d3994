"""Measure what distinguishes RL4VLM's gym-cards rules (the -v0 defaults) from our variants (env kwargs).

Usage:
    python bench/gym_cards_rules.py [--episodes 10000] [--seed 0]

Episode k is reset with seed ``seed + k``; random agents draw from ``numpy.random.default_rng(seed)``.
Everything runs on the frameless env core (``reset_state``/``step_state``), so the whole table takes
seconds. The printed markdown table is the one in docs/envs.md.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np

import vlmppo.envs as envs
from vlmppo.envs import is_success
from vlmppo.envs.cards.formula import is_solvable

NL, EZ, P24 = "gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0"
OURS = {
    NL: {"uniform_start": True},
    EZ: {"uniform_deal": True, "exact_arithmetic": True, "refuse_unavailable": True},
    P24: {"solvable_only": True, "exact_arithmetic": True, "refuse_unavailable": True},
}


def pct(x: float, n: int) -> str:
    return f"{x:.1%} ± {1.96 * math.sqrt(x * (1 - x) / n):.1%}" if 0 < x < 1 else f"{x:.1%}"


def core(env_id: str, options: dict):
    return envs.make_env(env_id, **options).unwrapped


def random_agent(
    env_id: str, options: dict, episodes: int, seed: int, limit: int = 300
) -> tuple[float, float]:
    """(success rate, solved rate) of uniformly random actions, cut at ``limit`` steps (the time limit)."""
    env, adapter = core(env_id, options), envs.get_adapter(env_id)
    rng = np.random.default_rng(seed)
    success = solved = 0
    for k in range(episodes):
        info, total = env.reset_state(seed=seed + k), 0.0
        for _ in range(limit):
            reward, terminated, truncated, info = env.step_state(int(rng.integers(env.action_space.n)))
            total += reward
            if terminated or truncated:
                break
        success += is_success(total)
        solved += adapter.is_solved(total, info)
    return success / episodes, solved / episodes


def pressing(env_id: str, options: dict, token: str, limit: int = 300) -> str:
    """Steps and return of always pressing ``token`` (seed 0), cut at ``limit`` steps."""
    env = core(env_id, options)
    env.reset_state(seed=0)
    action = envs.get_adapter(env_id).action_index(token)
    total = 0.0
    for step in range(1, limit + 1):
        reward, terminated, truncated, _ = env.step_state(action)
        total += reward
        if terminated or truncated:
            return f"ends at step {step}, return {total:+g}"
    return f"runs to the {limit}-step time limit, return {total:+g}"


def deal_stats(env_id: str, options: dict, episodes: int, seed: int) -> dict[str, float]:
    env = core(env_id, options)
    deals = [env.reset_state(seed=seed + k) for k in range(episodes)]
    if env_id == NL:
        return {"distance 1": np.mean([abs(d["current"] - d["target"]) == 1 for d in deals])}
    if env_id == P24:
        return {"solvable (exact)": np.mean([is_solvable(d["numbers"], 24) for d in deals])}
    pairs = [tuple(sorted(d["numbers"])) for d in deals]
    return {
        "(2, 10)": np.mean([p == (2, 10) for p in pairs]),
        "(5, 7)": np.mean([p == (5, 7) for p in pairs]),
        "a * b = 12": np.mean([p[0] * p[1] == 12 for p in pairs]),
        "an ace": np.mean([1 in p for p in pairs]),
    }


def rows(episodes: int, seed: int) -> list[tuple[str, str, str]]:
    out = []
    for env_id in (NL, EZ, P24):
        name = env_id.split("/")[1]
        faithful, ours = (
            deal_stats(env_id, {}, episodes, seed),
            deal_stats(env_id, OURS[env_id], episodes, seed),
        )
        for key in faithful:
            out.append((f"{name}: deals with {key}", pct(faithful[key], episodes), pct(ours[key], episodes)))
        f_rates = random_agent(env_id, {}, episodes, seed)
        o_rates = random_agent(env_id, OURS[env_id], episodes, seed)
        out.append(
            (
                f"{name}: random agent, success (return > 0)",
                pct(f_rates[0], episodes),
                pct(o_rates[0], episodes),
            )
        )
        out.append((f"{name}: random agent, solved", pct(f_rates[1], episodes), pct(o_rates[1], episodes)))
    for env_id, token in ((EZ, "1"), (P24, "(")):
        name = env_id.split("/")[1]
        out.append(
            (
                f'{name}: always pressing "{token}"',
                pressing(env_id, {}, token),
                pressing(env_id, OURS[env_id], token),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    all_tuples = [min(r, 10) for r in range(1, 14)]
    solvable = sum(is_solvable(list(t), 24) for t in itertools.product(all_tuples, repeat=4))
    print(f"Points24: {solvable} of {13**4} rank tuples ({solvable / 13**4:.2%}) have an exact solution.\n")
    print(f"| statistic ({args.episodes} episodes, ±95%) | RL4VLM rules (default) | our variants |")
    print("|---|---|---|")
    for name, faithful, ours in rows(args.episodes, args.seed):
        print(f"| {name} | {faithful} | {ours} |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
