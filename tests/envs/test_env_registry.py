"""Every registered env follows the gymnasium API, is deterministic per seed, and bad ids fail clearly."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from PIL import Image

import vlmppo.envs as envs
from vlmppo.envs.registry import MINIGRID_PRESETS, OUR_ENVS, register_envs
from vlmppo.errors import EnvError

CHECKED = [*OUR_ENVS, *MINIGRID_PRESETS]


@pytest.mark.parametrize("env_id", CHECKED)
def test_env_passes_gymnasium_check_env_without_warnings(env_id):
    env = envs.make_env(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # The only acceptable note is that the checked env is wrapped (TimeLimit etc.), which is the point.
    problems = [str(w.message) for w in caught if "different from the unwrapped" not in str(w.message)]
    assert problems == []


def test_minigrid_agent_view_passes_check_env():
    env = envs.make_env("MiniGrid-DoorKey-6x6-v0", observation="agent_view", tile_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env)
    assert env.observation_space.shape == (56, 56, 3)


def _rollout(env_id: str, seed: int, n_steps: int = 12):
    env = envs.make_env(env_id)
    actions = np.random.default_rng(123).integers(0, env.action_space.n, size=n_steps)
    obs, info = env.reset(seed=seed)
    trace = [(obs.tobytes(), json.dumps(info, sort_keys=True))]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(int(a))
        trace.append((obs.tobytes(), reward, terminated, truncated, json.dumps(info, sort_keys=True)))
        if terminated or truncated:
            obs, info = env.reset()
            trace.append((obs.tobytes(), json.dumps(info, sort_keys=True)))
    return trace


@pytest.mark.parametrize("env_id", CHECKED)
def test_same_seed_gives_same_frames_rewards_and_infos(env_id):
    # json.dumps also proves every info is JSON-ready, as collect writes it to episodes.jsonl.
    assert _rollout(env_id, seed=5) == _rollout(env_id, seed=5)


# Probes and the fixed Empty layouts look the same every episode by design.
FIXED_LOOK = {"MiniGrid-Empty-5x5-v0", "MiniGrid-Empty-8x8-v0"}


@pytest.mark.parametrize("env_id", [i for i in CHECKED if not i.startswith("probe/") and i not in FIXED_LOOK])
def test_different_seeds_give_different_first_frames(env_id):
    firsts = {envs.make_env(env_id).reset(seed=s)[0].tobytes() for s in range(6)}
    assert len(firsts) > 1


@pytest.mark.parametrize("env_id", CHECKED)
def test_frames_are_uint8_rgb_of_the_declared_size(env_id):
    env = envs.make_env(env_id)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == env.observation_space.shape and obs.shape[2] == 3
    expected = {"gym_cards": (300, 300), "probe": (64, 64)}.get(env_id.split("/")[0])
    if expected:
        assert obs.shape[:2] == expected


def test_registration_is_idempotent():
    before = len(gym.registry)
    register_envs()
    import vlmppo.envs  # noqa: F401

    assert len(gym.registry) == before


def test_unknown_id_names_it_and_suggests_close_matches():
    with pytest.raises(EnvError) as err:
        envs.make_env("gym_cards/NumberLin-v0")
    assert "gym_cards/NumberLin-v0" in str(err.value) and "gym_cards/NumberLine-v0" in str(err.value)
    with pytest.raises(EnvError, match="MiniGrid-DoorKey-6x6-v0"):
        envs.get_adapter("MiniGrid-DorKey-6x6-v0")


def test_gymnasium_env_we_cannot_drive_is_refused():
    with pytest.raises(EnvError, match="CartPole-v1"):
        envs.make_env("CartPole-v1")


def test_bad_options_are_env_errors():
    with pytest.raises(EnvError, match="no_such_option"):
        envs.make_env("gym_cards/NumberLine-v0", no_such_option=3)
    with pytest.raises(EnvError, match="only for MiniGrid"):
        envs.make_env("gym_cards/NumberLine-v0", observation="agent_view")


def test_max_episode_steps_is_applied_to_cards_and_minigrid():
    env = envs.make_env("gym_cards/Blackjack-v0", max_episode_steps=1)
    env.reset(seed=0)
    hand = env.unwrapped.player
    hand[:] = [2, 3]  # a hit cannot bust, so only the time limit can end the episode
    assert env.step(1)[3] is True
    grid = envs.make_env("MiniGrid-Empty-8x8-v0", max_episode_steps=3)
    grid.reset(seed=0)
    assert [grid.step(0)[3] for _ in range(3)] == [False, False, True]


def test_list_envs_has_ids_families_actions_and_frame_sizes():
    rows = {r["id"]: r for r in envs.list_envs()}
    assert rows["gym_cards/Blackjack-v0"]["legal_actions"] == ["stand", "hit"]
    assert rows["probe/Color-v0"]["frame_size"] == (64, 64)
    assert rows["MiniGrid-DoorKey-6x6-v0"]["frame_size"] == (192, 192)
    assert rows["MiniGrid-Empty-Random-6x6-v0"]["legal_actions"] == [
        "turn left",
        "turn right",
        "move forward",
    ]
    assert set(OUR_ENVS) | set(MINIGRID_PRESETS) <= set(rows)


def test_render_first_frame_writes_the_png_and_returns_the_prompt(tmp_path):
    out = tmp_path / "sub" / "frame.png"
    prompt = envs.render_first_frame("gym_cards/EZPoints-v0", 0, out)
    first, _ = envs.make_env("gym_cards/EZPoints-v0").reset(seed=0)
    assert np.array_equal(np.array(Image.open(out)), first)
    assert '"thoughts"' in prompt and "The formula is still empty." in prompt
    paper = envs.render_first_frame("gym_cards/EZPoints-v0", 0, out, prompt="rl4vlm")
    assert '"cards": [x, y]' in paper and '"current formula": ""' in paper
    short = envs.render_first_frame("MiniGrid-DoorKey-6x6-v0", 0, out, prompt="action_only", tile_size=8)
    assert '{"action": "..."}' in short and '"thoughts"' not in short
    assert Image.open(out).size == (48, 48)


def test_env_built_from_a_config_section_honours_every_field_of_it():
    from vlmppo.config.schema import EnvConfig

    section = EnvConfig(
        id="MiniGrid-Empty-5x5-v0",
        max_episode_steps=3,
        observation="agent_view",
        tile_size=8,
        prompt="action_only",
    )
    env = envs.make_env_from_config(section)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (7 * 8, 7 * 8, 3)  # the agent's 7x7 view at 8 px per tile
    ends = [env.step(2)[3] for _ in range(3)]  # "go forward" against the wall: only the time limit ends it
    assert ends == [False, False, True]
    adapter = envs.adapter_from_config(section)
    assert "thoughts" not in adapter.prompt(env.reset(seed=0)[1])  # the action-only prompt style
    cards = envs.make_env_from_config(EnvConfig(id="gym_cards/Points24-v0", kwargs={"solvable_only": True}))
    assert cards.unwrapped.solvable_only is True  # env.kwargs reach the constructor (the default is False)


def test_vec_env_built_from_a_config_section_takes_its_count_and_seed_from_the_caller():
    from vlmppo.config.schema import EnvConfig

    section = EnvConfig(
        id="MiniGrid-Empty-5x5-v0", n_envs=4, max_episode_steps=2, tile_size=8, prompt="action_only"
    )
    vec = envs.make_vec_env_from_config(section, 2, seed=5)
    obs, infos = vec.reset()
    assert len(obs) == 2 and obs[0].shape == (5 * 8, 5 * 8, 3)
    assert vec.adapter.prompt(infos[0]) == envs.adapter_from_config(section).prompt(infos[0])
    first = envs.make_env_from_config(section).reset(seed=5)[0]
    assert np.array_equal(obs[0], first)  # env i is seeded seed + i
