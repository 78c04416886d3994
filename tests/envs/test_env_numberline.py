"""NumberLine rules, expert and transition scores, with hand-made states."""

from __future__ import annotations

import pytest

import vlmppo.envs as envs

MINUS, PLUS = 0, 1


def env_at(current: int, target: int, max_position: int = 5):
    env = envs.make_env("gym_cards/NumberLine-v0", max_position=max_position)
    env.reset(seed=0)
    env.unwrapped.current, env.unwrapped.target = current, target
    return env


def test_start_is_never_the_target_and_stays_on_the_line():
    for seed in range(60):
        _, info = envs.make_env("gym_cards/NumberLine-v0").reset(seed=seed)
        assert info["current"] != info["target"]
        assert 0 <= info["current"] <= 5 and 0 <= info["target"] <= 5


def test_reaching_the_target_pays_one_and_terminates():
    _, reward, terminated, truncated, info = env_at(2, 3).step(PLUS)
    assert (reward, terminated, truncated, info["current"]) == (1.0, True, False, 3)


def test_step_toward_the_target_pays_zero():
    _, reward, terminated, _, info = env_at(1, 4).step(PLUS)
    assert (reward, terminated, info["current"]) == (0.0, False, 2)


def test_step_away_from_the_target_costs_one():
    _, reward, terminated, _, info = env_at(3, 4).step(MINUS)
    assert (reward, terminated, info["current"]) == (-1.0, False, 2)


@pytest.mark.parametrize(("current", "target", "action"), [(0, 3, MINUS), (5, 2, PLUS)])
def test_push_against_an_end_is_clamped_and_costs_one(current, target, action):
    _, reward, _, _, info = env_at(current, target).step(action)
    assert (reward, info["current"]) == (-1.0, current)


def test_episode_is_truncated_after_twice_max_position_steps():
    env = env_at(2, 5, max_position=5)
    flags = [env.step(MINUS if k % 2 == 0 else PLUS)[3] for k in range(10)]
    assert flags == [False] * 9 + [True]


def test_expert_always_wins_in_the_fewest_steps(play_expert):
    for seed in range(100):
        env = envs.make_env("gym_cards/NumberLine-v0")
        _, info = env.reset(seed=seed)
        distance = abs(info["current"] - info["target"])
        total, final, adapter, steps = play_expert("gym_cards/NumberLine-v0", seed)
        assert adapter.is_solved(total, final) and steps == distance and total == 1.0


def test_expert_reasoning_names_current_target_and_move():
    adapter = envs.get_adapter("gym_cards/NumberLine-v0")
    choice = adapter.expert(None, {"current": 2, "target": 4})
    assert (adapter.legal_actions[choice.index], choice.reasoning) == ("+", "current 2, target 4: move +")


def test_scores_rank_reaching_approaching_clamping_and_retreating():
    adapter = envs.get_adapter("gym_cards/NumberLine-v0")

    def score(before, action, after):
        return adapter.expert_score(
            {"current": before, "target": 3}, action, {"current": after, "target": 3}, 0
        )[0]

    assert score(2, PLUS, 3) == 10
    assert score(0, PLUS, 1) == 8
    assert score(5, PLUS, 5) == 1
    assert score(2, MINUS, 1) == 0
