"""Probe environments: their answers are known by construction."""

from __future__ import annotations

import numpy as np

import vlmppo.envs as envs

RED, BLUE = [255, 0, 0], [0, 0, 255]


def test_constant_pays_one_for_any_action_and_ends():
    for action in (0, 1):
        env = envs.make_env("probe/Constant-v0")
        obs, _ = env.reset(seed=0)
        assert obs.shape == (64, 64, 3)
        assert env.step(action)[1:4] == (1.0, True, False)


def test_color_frame_matches_info_and_only_the_right_answer_pays():
    adapter = envs.get_adapter("probe/Color-v0")
    seen = set()
    for seed in range(20):
        env = envs.make_env("probe/Color-v0")
        obs, info = env.reset(seed=seed)
        seen.add(info["color"])
        assert (obs.reshape(-1, 3) == (RED if info["color"] == "red" else BLUE)).all()
        right = adapter.action_index("left" if info["color"] == "red" else "right")
        assert info["correct_action"] == adapter.legal_actions[right] and info["correct_index"] == right
        _, reward, terminated, _, final = env.step(1 - right)
        assert (reward, terminated) == (0.0, True) and not adapter.is_solved(reward, final)
        env.reset(seed=seed)
        assert env.step(right)[1] == 1.0
    assert seen == {"red", "blue"}


def test_color_expert_and_scores_use_the_colour():
    adapter = envs.get_adapter("probe/Color-v0")
    info = {"color": "blue", "correct_action": "right", "correct_index": 1}
    assert adapter.expert(None, info).index == 1
    assert adapter.expert_score(info, 1, {}, 1.0)[0] == 10 and adapter.expert_score(info, 0, {}, 0.0)[0] == 0


def test_twostep_pays_only_at_the_second_step_and_shows_the_step():
    env = envs.make_env("probe/TwoStep-v0")
    first, info = env.reset(seed=0)
    assert info["step"] == 1
    second, r1, t1, _, info = env.step(0)
    assert (r1, t1, info["step"]) == (0.0, False, 2)
    last, r2, t2, _, _ = env.step(1)
    assert (r2, t2) == (1.0, True)
    colours = {tuple(f[0, 0]) for f in (first, second, last)}
    assert len(colours) == 3 and all((f == f[0, 0]).all() for f in (first, second, last))


def test_probe_prompts_are_short_and_name_the_actions():
    for env_id in ("probe/Constant-v0", "probe/Color-v0", "probe/TwoStep-v0"):
        prompt = envs.get_adapter(env_id).prompt({"step": 1}, action_only=True)
        assert '"left", "right"' in prompt and len(prompt) < 300
    assert envs.get_adapter("probe/TwoStep-v0").is_solved(1.0, {}) is True


def test_color_with_steps_shows_a_seeded_sequence_marked_by_step_and_pays_each_step():
    adapter = envs.get_adapter("probe/Color-v0")
    env = envs.make_env("probe/Color-v0", steps=3)
    obs, info = env.reset(seed=4)
    colours, frames, total = [], [], 0.0
    for step in (1, 2, 3):
        assert info["step"] == step and info["steps"] == 3
        squares = [(obs[2:8, 2 + 8 * k : 8 + 8 * k] == 255).all() for k in range(4)]
        assert squares == [k < step for k in range(4)] and (obs[20:] == obs[20, 20]).all()
        colours.append(info["color"])
        frames.append(obs)
        obs, reward, terminated, _, info = env.step(
            info["correct_index"] if step != 2 else 1 - info["correct_index"]
        )
        total += reward
        assert terminated == (step == 3)
    assert total == 2.0 and not adapter.is_solved(total, info) and adapter.is_solved(3.0, info)
    again, info = env.reset(seed=4)  # the sequence is the seed's, whatever the actions were
    replay = [info["color"]] + [env.step(0)[4]["color"] for _ in range(2)]
    assert np.array_equal(again, frames[0]) and replay == colours
