"""Evaluation metrics: the Wilson score interval and the summary written to ``metrics.json``.

Pure Python (no torch, no numpy): the summary is computed from per-episode records, so that the same
function serves a checkpoint and the expert/random baselines.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter

# The policies `vlmppo eval --policy` plays instead of a checkpoint; the report and the pipeline place the
# agent between them.
BASELINES = ("expert", "random")
# Two-sided 95%: the 0.975 quantile of the standard normal.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is not empty at 0 or n successes,
    which matters for the 100% of an expert or the 0% of a random agent on a hard task.

    Args:
        successes: Successful episodes, ``0 <= successes <= n``.
        n: Episodes, at least 1.
        z: Normal quantile (1.96 for 95%).

    Returns:
        (low, high), both in [0, 1].
    """
    if n < 1:
        raise ValueError("the Wilson interval needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must be between 0 and n ({n})")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # Exact endpoints at 0 and n (the formula gives them up to rounding).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _rate_block(episodes: list[dict]) -> dict:
    n = len(episodes)
    wins = sum(bool(e["success"]) for e in episodes)
    solved = sum(bool(e["solved"]) for e in episodes)
    returns = [float(e["return"]) for e in episodes]
    return {
        "episodes": n,
        "successes": wins,
        "success_rate": wins / n,
        "success_ci95": list(wilson_interval(wins, n)),
        "solved": solved,
        "solved_rate": solved / n,
        "solved_ci95": list(wilson_interval(solved, n)),
        "return_mean": statistics.fmean(returns),
        "return_median": statistics.median(returns),
        "length_mean": statistics.fmean(e["length"] for e in episodes),
    }


def summarize(episodes: list[dict], steps: list[dict], *, legal_actions: list[str], wall_s: float) -> dict:
    """The numbers of ``metrics.json``.

    Args:
        episodes: One dict per finished episode: ``seed, return, length, success`` (RL4VLM's: return
            > 0), ``solved`` (the task's own goal).
        steps: One dict per env step: ``invalid, action`` (the action string) and ``answer_tokens``
            (None for policies that write no text).
        legal_actions: The env's action strings, in order (every action gets a histogram entry).
        wall_s: Wall-clock seconds of the whole evaluation (model loading excluded).

    Returns:
        ``success_rate``, ``success_ci95`` [low, high], ``solved_rate``, ``solved_ci95``, ``return_mean``, ``return_median``,
        ``length_mean``, ``invalid_action_rate``, ``tokens_per_answer`` (None without text),
        ``action_counts``, ``per_seed`` (the same rate block per seed), ``wall_s``,
        ``env_steps``, ``env_steps_per_s``.
    """
    if not episodes:
        raise ValueError("no finished episode to summarize")
    block = _rate_block(episodes)
    seeds = sorted({e["seed"] for e in episodes})
    per_seed = {str(s): _rate_block([e for e in episodes if e["seed"] == s]) for s in seeds}
    tokens = [s["answer_tokens"] for s in steps if s.get("answer_tokens") is not None]
    counts = Counter(s["action"] for s in steps)
    return {
        **block,
        "invalid_action_rate": sum(bool(s["invalid"]) for s in steps) / max(1, len(steps)),
        "tokens_per_answer": statistics.fmean(tokens) if tokens else None,
        "action_counts": {a: counts.get(a, 0) for a in legal_actions},
        "per_seed": per_seed,
        "wall_s": wall_s,
        "env_steps": len(steps),
        "env_steps_per_s": len(steps) / max(wall_s, 1e-9),
    }
