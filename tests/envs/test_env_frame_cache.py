"""Drawn frames kept per env class (``FrameEnv._frame``): every frame an env returns is exactly the one its
``_draw`` makes for that state, in a fresh array, whether it was drawn now or kept from before."""

from __future__ import annotations

import numpy as np
import pytest

from vlmppo.envs import base, make_vec_env


@pytest.mark.parametrize(
    "env_id",
    ["gym_cards/NumberLine-v0", "gym_cards/Blackjack-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0"],
)
def test_kept_frames_equal_freshly_drawn_ones(env_id):
    vec = make_vec_env(env_id, 4, 0)
    obs, _ = vec.reset()
    rng = np.random.default_rng(0)
    kept = base._drawn.get(type(vec.envs[0].unwrapped))
    steps = 40
    for _ in range(steps):
        for env, frame in zip(vec.envs, obs, strict=True):
            drawn = env.unwrapped._draw()  # drawn now, no cache involved
            assert frame.dtype == np.uint8 and np.array_equal(frame, drawn)
            assert frame.flags.writeable and frame.flags.owndata
        previous = obs
        obs, _, _, _, infos = vec.step(rng.integers(0, vec.n_actions, size=4).tolist())
        for before, after in zip(previous, obs, strict=True):
            assert not np.shares_memory(before, after)
        for info in infos:  # an episode's last frame too (the vector env hands it over on reset)
            if "final_obs" in info:
                assert info["final_obs"].flags.writeable
    kept = base._drawn[type(vec.envs[0].unwrapped)]
    assert 0 < len(kept) <= base.FRAMES_KEPT


def test_writing_into_a_returned_frame_does_not_change_later_ones():
    vec = make_vec_env("gym_cards/NumberLine-v0", 1, 3)
    obs, _ = vec.reset()
    env = vec.envs[0].unwrapped
    expected = env._draw()
    obs[0][:] = 0
    assert np.array_equal(env._frame(), expected)


def test_the_kept_frames_are_bounded(monkeypatch):
    monkeypatch.setattr(base, "FRAMES_KEPT", 3)
    monkeypatch.setattr(base, "_drawn", {})
    vec = make_vec_env("gym_cards/NumberLine-v0", 16, 5)
    vec.reset()
    for _ in range(5):
        vec.step([1] * 16)
    assert len(base._drawn[type(vec.envs[0].unwrapped)]) == 3  # NumberLine has 30 frames
