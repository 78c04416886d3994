"""VecEnv: seeding, auto-reset with the finished episode's final frame and info."""

from __future__ import annotations

import numpy as np
import pytest

import vlmppo.envs as envs


def test_env_i_is_seeded_seed_plus_i():
    vec = envs.make_vec_env("gym_cards/NumberLine-v0", n_envs=3, seed=10)
    obs, infos = vec.reset()
    for i in range(3):
        ref_obs, ref_info = envs.make_env("gym_cards/NumberLine-v0").reset(seed=10 + i)
        assert np.array_equal(obs[i], ref_obs) and infos[i] == ref_info
    assert vec.n_envs == 3 and len(vec.envs) == 3 and vec.adapter.legal_actions == ["-", "+"]


def test_auto_reset_keeps_the_final_frame_info_and_episode_stats():
    vec = envs.make_vec_env("gym_cards/NumberLine-v0", n_envs=2, seed=0)
    ref = envs.make_env("gym_cards/NumberLine-v0")
    ref_obs, ref_info = ref.reset(seed=0)
    _, infos = vec.reset()
    total, length = 0.0, 0
    while length < 20:
        length += 1
        expert = [vec.adapter.expert(None, info).index for info in infos]
        obs, rewards, terminated, truncated, infos = vec.step(expert)
        ref_obs, ref_reward, ref_term, ref_trunc, ref_info = ref.step(expert[0])
        total += ref_reward
        assert rewards.dtype == np.float64 and terminated.dtype == bool and truncated.dtype == bool
        assert (rewards[0], terminated[0], truncated[0]) == (ref_reward, ref_term, ref_trunc)
        if ref_term or ref_trunc:
            break
    assert np.array_equal(infos[0]["final_obs"], ref_obs) and infos[0]["final_info"] == ref_info
    assert infos[0]["episode"] == {"return": total, "length": length, "success": True, "solved": True}
    # The returned frame is already the next episode's first one, from the env's continued RNG.
    next_obs, next_info = ref.reset()
    assert np.array_equal(obs[0], next_obs) and infos[0]["target"] == next_info["target"]


def test_vec_env_runs_minigrid_and_truncation_is_reported():
    vec = envs.make_vec_env("MiniGrid-Empty-5x5-v0", n_envs=2, seed=0, max_episode_steps=2, tile_size=8)
    obs, _ = vec.reset()
    assert obs[0].shape == (40, 40, 3)
    vec.step([0, 0])
    obs, _, terminated, truncated, infos = vec.step([0, 0])
    assert truncated.all() and not terminated.any()
    assert infos[1]["episode"]["success"] is False and infos[1]["final_obs"].shape == (40, 40, 3)


def test_parser_fallback_rngs_are_per_env_and_reproducible():
    a = envs.make_vec_env("probe/Color-v0", n_envs=2, seed=3)
    b = envs.make_vec_env("probe/Color-v0", n_envs=2, seed=3)
    picks_a = [a.adapter.parse("garbage", a.rngs[i]).index for i in range(2) for _ in range(8)]
    picks_b = [b.adapter.parse("garbage", b.rngs[i]).index for i in range(2) for _ in range(8)]
    assert picks_a == picks_b


def test_step_before_reset_and_wrong_action_count_are_refused():
    vec = envs.make_vec_env("probe/Constant-v0", n_envs=2, seed=0)
    with pytest.raises(RuntimeError):
        vec.step([0, 0])
    vec.reset()
    with pytest.raises(ValueError):
        vec.step([0])


def test_vec_step_takes_legal_action_indices_and_maps_them_for_minigrid():
    vec = envs.make_vec_env("MiniGrid-DoorKey-6x6-v0", n_envs=1, seed=0, tile_size=8)
    _, infos = vec.reset()
    for _ in range(30):  # follow the expert through "pick up" (index 3) and "toggle" (index 4)
        choice = vec.adapter.expert(None, infos[0])
        _, rewards, terminated, _, infos = vec.step([choice.index])
        if terminated[0]:
            break
    assert rewards[0] > 0 and infos[0]["episode"]["success"]
    with pytest.raises(ValueError, match="indices into the 5 legal actions"):
        vec.step([5])  # MiniGrid's own id for toggle: already mapped, refused


def test_episode_stats_tell_rl4vlm_success_from_solved():
    vec = envs.make_vec_env("gym_cards/NumberLine-v0", n_envs=1, seed=0)
    vec.reset()
    env = vec.envs[0].unwrapped
    env.current, env.target = 2, 3
    vec.step([0])  # a step away: -1
    vec.step([1])  # back: 0
    *_, infos = vec.step([1])  # the target: +1, so the return is 0
    assert infos[0]["episode"] == {"return": 0.0, "length": 3, "success": False, "solved": True}
