"""`eval --policy expert|random` on every tiny preset reproduces success rates derived without the harness.

The reference rates come from somewhere else than the eval runner: exact calculations (NumberLine's
random walk, the probes), Gymnasium's own ``Blackjack-v1`` (a separate implementation of the same rules),
MiniGrid's raw env (no frame wrapper), or a plain loop over our raw card env. The runner's 95% Wilson
interval must contain an exact reference; a simulated one has its own interval, and the two must overlap
(a rare event like a random 24-points formula cannot be pinned down by a few hundred episodes).
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest

from vlmppo.config import load_config, presets_dir
from vlmppo.envs import get_adapter, make_env
from vlmppo.envs.cards.blackjack import basic_strategy
from vlmppo.eval.metrics import wilson_interval
from vlmppo.eval.runner import evaluate

pytestmark = pytest.mark.e2e  # baselines played on every tiny preset

TINY = sorted(p.stem for p in presets_dir().glob("*-tiny.yaml"))

# Episodes the runner plays per (preset, policy): more where the rate is not 0 or 1, fewer where an
# episode is slow (MultiRoom renders a 25x25 grid each step; the Points24 expert solves each deal).
EPISODES = {
    ("blackjack-tiny", "expert"): 300,
    ("blackjack-tiny", "random"): 300,
    ("numberline-tiny", "random"): 120,
    ("numberline-llava-tiny", "random"): 120,
    ("probe-color-tiny", "random"): 200,
    ("minigrid-empty-tiny", "random"): 40,
    ("ezpoints-tiny", "random"): 40,
    ("minigrid-multiroom-tiny", "random"): 8,
    ("points24-tiny", "random"): 8,
}


def test_every_tiny_preset_is_covered():
    assert len(TINY) >= 11 and "numberline-tiny" in TINY and "probe-color-tiny" in TINY


def numberline_random_exact(max_position: int) -> dict[str, float]:
    """P(success) and P(solved) of uniform random moves under RL4VLM's start rule: start and target
    uniform, the target bumped to (target + 1) % max_position when they are equal; moves clamped to
    [0, max_position]; solved on reaching the target within 2 * max_position steps, success (return > 0)
    only when every move until then went toward it (any other move costs -1, reaching it pays +1)."""
    positions = max_position + 1
    rates = {"success": 0.0, "solved": 0.0}
    for start in range(positions):
        for drawn in range(positions):
            target = (drawn + 1) % max_position if drawn == start else drawn
            dist = {(start, True): 1.0}  # (position, every move so far went toward the target)
            for _ in range(2 * max_position):
                nxt: dict = {}
                for (current, straight), p in dist.items():
                    for move in (-1, 1):
                        n = min(max(current + move, 0), max_position)
                        toward = straight and abs(n - target) < abs(current - target)
                        if n == target:
                            rates["solved"] += p / 2 / positions**2
                            rates["success"] += p / 2 / positions**2 if toward else 0.0
                        else:
                            nxt[(n, toward)] = nxt.get((n, toward), 0.0) + p / 2
                dist = nxt
    return rates


@functools.cache
def blackjack_reference(policy: str, rounds: int = 5000) -> tuple[int, int]:
    """Gymnasium's Blackjack-v1 (infinite deck, dealer stands on 17, sab=False like ours)."""
    env = gym.make("Blackjack-v1", sab=False, natural=False)
    rng = np.random.default_rng(7)
    wins = 0
    for k in range(rounds):
        (player, dealer, usable), _ = env.reset(seed=k)
        done, reward = False, 0.0
        while not done:
            if policy == "expert":
                action = 1 if basic_strategy(player, bool(usable), dealer) == "hit" else 0
            else:
                action = int(rng.integers(2))
            (player, dealer, usable), reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        wins += reward > 0
    return wins, rounds


@functools.cache
def raw_loop_reference(preset: str, policy: str, episodes: int) -> dict[str, tuple[int, int]]:
    """A plain loop over the raw env (MiniGrid: gymnasium's own env, no frame wrapper), no runner."""
    cfg = load_config(preset)
    adapter = get_adapter(cfg.env.id)
    if cfg.env.id.startswith("MiniGrid-"):
        env = gym.make(cfg.env.id, max_steps=cfg.env.max_episode_steps)
    else:
        env = make_env(cfg.env.id, max_episode_steps=cfg.env.max_episode_steps, **cfg.env.kwargs)
    rng = np.random.default_rng(11)
    success = solved = 0
    for k in range(episodes):
        _, info = env.reset(seed=500_000 + k)
        done, total = False, 0.0
        while not done:
            choice = adapter.expert(env, info).index if policy == "expert" else None
            index = int(rng.integers(len(adapter.legal_actions))) if choice is None else choice
            _, reward, terminated, truncated, info = env.step(adapter.to_env_action(index))
            total += float(reward)
            done = terminated or truncated
        success += total > 0
        # MiniGrid's own goal signal is a positive reward; our card envs report theirs in their info.
        solved += total > 0 if cfg.env.id.startswith("MiniGrid-") else adapter.is_solved(total, info)
    return {"success": (success, episodes), "solved": (solved, episodes)}


def reference_rates(preset: str, policy: str) -> dict[str, float | tuple[int, int]]:
    """Per rate ("success": return > 0, "solved": the task's goal), an exact value or (hits, episodes)
    of a simulation."""
    env_id = load_config(preset).env.id
    if env_id == "gym_cards/Blackjack-v0":
        wins = blackjack_reference(policy)
        return {"success": wins, "solved": wins}  # solved = the round is won
    if env_id == "gym_cards/NumberLine-v0":
        # Expert: it steps toward the target, at most max_position steps < the 2 * max_position limit.
        return {"success": 1.0, "solved": 1.0} if policy == "expert" else numberline_random_exact(5)
    if env_id == "probe/Color-v0":
        rate = 1.0 if policy == "expert" else 0.5
        return {"success": rate, "solved": rate}
    if env_id in ("probe/Constant-v0", "probe/TwoStep-v0"):
        return {"success": 1.0, "solved": 1.0}  # every episode pays
    if env_id == "gym_cards/EZPoints-v0" and policy == "expert":
        return {"success": 1.0, "solved": 1.0}  # RL4VLM's deals are always solvable; an exact solver
    # MiniGrid (both policies, under the preset's time limit), Points24's expert (RL4VLM's deals include
    # unsolvable ones, which it plays at random) and random formulas: measured.
    return raw_loop_reference(
        preset, policy, 60 if "Points24" in env_id else 100 if "MultiRoom" in env_id else 200
    )


def test_numberline_exact_random_rates_agree_with_a_plain_simulation():
    rng = np.random.default_rng(0)
    success = solved = 0
    for _ in range(20000):
        current, target = int(rng.integers(6)), int(rng.integers(6))
        if current == target:
            target = (target + 1) % 5
        total = 0
        for _ in range(10):
            before = abs(current - target)
            current = min(max(current + (1 if rng.random() < 0.5 else -1), 0), 5)
            if current == target:
                total += 1
                break
            total -= abs(current - target) >= before
        success += total > 0
        solved += current == target
    exact = numberline_random_exact(5)
    assert success / 20000 == pytest.approx(exact["success"], abs=0.015)
    assert solved / 20000 == pytest.approx(exact["solved"], abs=0.015)


@pytest.mark.parametrize("policy", ["expert", "random"])
@pytest.mark.parametrize("preset", TINY)
def test_baseline_success_rate_matches_the_reference_within_the_ci(preset, policy, tmp_path):
    episodes = EPISODES.get((preset, policy), 16)
    cfg = load_config(
        preset, overrides=[f"run.output_dir={tmp_path}", f"eval.episodes={episodes}", "eval.trajectories=0"]
    )
    result = evaluate(cfg, policy=policy)
    m = result.metrics
    assert m["episodes"] == episodes and m["policy"] == policy
    for rate, reference in reference_rates(preset, policy).items():
        low, high = m[f"{rate}_ci95"]
        got = f"{preset} {policy} {rate}: {m[f'{rate}_rate']:.3f} [{low:.3f}, {high:.3f}]"
        if isinstance(reference, tuple):
            ref_low, ref_high = wilson_interval(*reference)
            assert low <= ref_high and ref_low <= high, (
                f"{got} vs simulated {reference} [{ref_low:.3f}, {ref_high:.3f}]"
            )
        else:
            assert low <= reference <= high, f"{got} vs exact {reference:.3f}"
    assert m["invalid_action_rate"] == 0.0 and m["tokens_per_answer"] is None
    assert (result.out_dir / "metrics.json").is_file() and result.out_dir.name == policy
