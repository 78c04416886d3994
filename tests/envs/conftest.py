"""Shared helpers for the env tests: play an episode with the expert."""

from __future__ import annotations

import pytest

import vlmppo.envs as envs


def _play_expert(env_id: str, seed: int, max_steps: int = 400, **make_kwargs):
    """Plays one episode of ``env_id`` with its expert; returns (total reward, final info, adapter, steps)."""
    env = envs.make_env(env_id, **make_kwargs)
    adapter = envs.get_adapter(env_id)
    _, info = env.reset(seed=seed)
    total, steps = 0.0, 0
    while steps < max_steps:
        steps += 1
        choice = adapter.expert(env, info)
        assert choice.index is not None, choice.reasoning
        _, reward, terminated, truncated, info = env.step(adapter.to_env_action(choice.index))
        total += reward
        if terminated or truncated:
            break
    env.close()
    return total, info, adapter, steps


@pytest.fixture
def play_expert():
    return _play_expert
