"""VecEnv's grouped resets (GRPO/GiGPO): shared seeds per group and round, waiting, resumable by pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import vlmppo.envs as envs
from vlmppo.envs.vec_env import VecEnv, group_seed

NUMBERLINE = "gym_cards/NumberLine-v0"


def away(info: dict) -> int:
    """The NumberLine action that moves away from the target (or against the wall): never ends the episode."""
    return 0 if info["current"] <= info["target"] and info["current"] > 0 else 1


def test_group_seeds_differ_across_groups_and_rounds():
    seeds = {group_seed(3, group, round_) for group in range(8) for round_ in range(50)}
    assert len(seeds) == 400
    assert group_seed(3, 1, 2) == group_seed(3, 1, 2) != group_seed(4, 1, 2)


def test_members_of_a_group_start_every_round_from_their_groups_seed():
    vec = envs.make_vec_env(NUMBERLINE, n_envs=6, seed=5, group_size=3)
    obs, infos = vec.reset()
    for i in range(6):
        ref_obs, ref_info = envs.make_env(NUMBERLINE).reset(seed=group_seed(5, i // 3, 0))
        assert np.array_equal(obs[i], ref_obs) and infos[i] == ref_info
    assert list(vec.group_rounds) == [1, 1]
    vec.reset()  # a new round: the next seed
    _, infos = vec.reset()
    assert infos[0] == envs.make_env(NUMBERLINE).reset(seed=group_seed(5, 0, 2))[1]


def test_a_member_that_finished_waits_until_its_group_has_finished_the_round():
    vec = envs.make_vec_env(NUMBERLINE, n_envs=4, seed=0, group_size=2)
    obs, infos = vec.reset()
    expert = vec.adapter.expert
    last_frame, waited = None, 0
    for _ in range(60):  # env 0 plays the expert and finishes; env 1 walks away until its time limit
        waiting = bool(infos[0].get("group_wait"))
        actions = [0 if waiting else expert(None, infos[0]).index, away(infos[1]), 0, 0]
        obs, rewards, terminated, truncated, infos = vec.step(actions)
        if terminated[0]:
            last_frame = obs[0]
            assert infos[0]["group_wait"] and "episode" in infos[0]  # its frame stays the last one
        if waiting:
            waited += 1
            assert rewards[0] == 0 and not (terminated[0] or truncated[0])
        if truncated[1] or terminated[1]:
            break
        if waiting:
            assert infos[0]["group_wait"] and np.array_equal(obs[0], last_frame)
    else:
        pytest.fail("env 1 never ended its episode")
    assert waited > 0 and vec.group_rounds[0] == 2  # group 0 started round 1 together
    assert "episode" in infos[1] and not infos[0].get("group_wait") and not infos[1].get("group_wait")
    assert np.array_equal(obs[0], obs[1])  # the same seed for both members
    assert infos[0] == {k: v for k, v in infos[1].items() if k not in ("final_obs", "final_info", "episode")}


def test_a_pickled_grouped_vec_env_continues_exactly():
    vec = envs.make_vec_env(NUMBERLINE, n_envs=4, seed=1, group_size=2)
    _, infos = vec.reset()
    rng = np.random.default_rng(0)
    for _ in range(3):
        _, _, _, _, infos = vec.step(list(rng.integers(0, 2, 4)))
    copy = pickle.loads(pickle.dumps(vec))
    for _ in range(25):
        actions = list(rng.integers(0, 2, 4))
        a, b = vec.step(actions), copy.step(actions)
        assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
        assert np.array_equal(a[1], b[1]) and a[4][0].keys() == b[4][0].keys()
    assert list(vec.group_rounds) == list(copy.group_rounds)


def test_a_vec_env_pickled_before_grouped_resets_still_loads():
    vec = envs.make_vec_env(NUMBERLINE, n_envs=2, seed=0)
    vec.reset()
    state = {k: v for k, v in vec.__dict__.items() if k not in ("group_size", "group_rounds", "_waiting")}
    old = VecEnv.__new__(VecEnv)
    old.__setstate__(state)
    obs, *_ = old.step([0, 1])
    assert len(obs) == 2 and old.group_size is None


def test_group_size_must_divide_the_envs():
    with pytest.raises(ValueError, match="does not divide"):
        envs.make_vec_env(NUMBERLINE, n_envs=4, seed=0, group_size=3)
