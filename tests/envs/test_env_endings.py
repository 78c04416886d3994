"""Every way an episode ends, in every env, with its (terminated, truncated) flags.

Truncated means a time limit cut the episode short of a terminal state, so GAE bootstraps from the value
of the last state; an end by the rules of the game (a goal, a bust, a formula submitted or too long) is
terminated and is not bootstrapped (issue 14: a too-long formula flagged truncated made the target of a
value head biased to 5 come out at 3.57 instead of -1).
"""

from __future__ import annotations

import gymnasium as gym
import pytest

import vlmppo.envs as envs

TERMINATED, TRUNCATED = (True, False), (False, True)


def play(env, actions, seed=0):
    """Steps ``actions`` (env action ids) from ``reset(seed)`` until the episode ends; returns the last
    (reward, (terminated, truncated)) and the number of steps taken."""
    env.reset(seed=seed)
    for n, action in enumerate(actions, start=1):
        _, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            return reward, (terminated, truncated), n
    raise AssertionError("the episode did not end")


def numberline_at(current, target):
    env = envs.make_env("gym_cards/NumberLine-v0")
    env.reset(seed=0)
    env.unwrapped.current, env.unwrapped.target = current, target
    return env


def test_numberline_reaching_the_target_is_terminated():
    _, reward, terminated, truncated, _ = numberline_at(1, 2).step(1)
    assert (reward, (terminated, truncated)) == (1.0, TERMINATED)


def test_numberline_step_limit_is_a_truncation():
    env = numberline_at(0, 5)
    flags = [env.step(0)[2:4] for _ in range(10)]  # pushing against 0 never reaches 5
    assert flags == [(False, False)] * 9 + [TRUNCATED]


def test_blackjack_bust_and_stand_are_terminated():
    env = envs.make_env("gym_cards/Blackjack-v0")
    assert play(env, [0])[1] == TERMINATED  # stand
    assert play(env, [1] * 30)[1] == TERMINATED  # hitting always ends in a bust


@pytest.mark.parametrize("env_id", ["gym_cards/EZPoints-v0", "gym_cards/Points24-v0"])
@pytest.mark.parametrize("options", [{}, {"exact_arithmetic": True, "refuse_unavailable": True}])
def test_points_submit_and_formula_cut_off_are_terminated_and_the_time_limit_truncates(env_id, options):
    env = envs.make_env(env_id, **options)
    adapter = envs.get_adapter(env_id)
    equals, plus = adapter.action_index("="), adapter.action_index("+")
    assert play(env, [equals]) == (-1.0, TERMINATED, 1)  # an empty formula submitted
    reward, flags, steps = play(env, [plus] * 30)
    assert (reward, flags, steps) == (-1.0, TERMINATED, adapter.cls.max_tokens + 2)
    # A refused number leaves the formula as it is: only the registered time limit ends that episode.
    env = envs.make_env(env_id, refuse_unavailable=True, max_episode_steps=12)
    absent = adapter.action_index("1") if env_id.endswith("EZPoints-v0") else None
    if absent is not None:  # RL4VLM's EZPoints never deals an ace
        assert play(env, [absent] * 20) == (-1.0, TRUNCATED, 12)


@pytest.mark.parametrize("env_id", ["probe/Constant-v0", "probe/Color-v0", "probe/TwoStep-v0"])
def test_probes_end_terminated(env_id):
    assert play(envs.make_env(env_id), [0, 0])[1] == TERMINATED


def test_minigrid_goal_is_terminated_and_its_step_limit_truncates():
    env_id = "MiniGrid-Empty-5x5-v0"
    env, adapter = envs.make_env(env_id, max_episode_steps=30, tile_size=8), envs.get_adapter(env_id)
    _, info = env.reset(seed=0)
    while True:
        _, reward, terminated, truncated, info = env.step(
            adapter.to_env_action(adapter.expert(env, info).index)
        )
        if terminated or truncated:
            break
    assert reward > 0 and (terminated, truncated) == TERMINATED
    turn_left = adapter.to_env_action(adapter.action_index("turn left"))
    assert play(env, [turn_left] * 40)[1:] == (TRUNCATED, 30)
    raw = gym.make(env_id)  # MiniGrid's own limit (max_steps) is a truncation too
    assert play(raw, [turn_left] * 1000)[1] == TRUNCATED
