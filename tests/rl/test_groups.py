"""GRPO and GiGPO advantages (rl/groups.py) against hand-computed cases, directly and through the buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmppo.config.schema import PpoConfig
from vlmppo.rl.buffer import RolloutBuffer
from vlmppo.rl.groups import group_advantages, returns_to_go, split_episodes

SQRT_HALF = math.sqrt(0.5)  # |x - mean| / std (Bessel) of two different values: 0.5 / 0.7071


def tensors(rewards, done, idle=None):
    rewards = torch.tensor(rewards, dtype=torch.float32)
    done = torch.tensor(done, dtype=torch.bool)
    idle = torch.zeros_like(done) if idle is None else torch.tensor(idle, dtype=torch.bool)
    return rewards, done, idle


def test_grpo_gives_each_episode_its_return_relative_to_its_group():
    # One step per episode, 2 groups of 2: returns (1, 0) and (1, 1).
    rewards, done, idle = tensors([[1.0, 0.0, 1.0, 1.0]], [[True] * 4])
    result = group_advantages(rewards, done, idle, 2, norm="std")
    assert torch.allclose(result.advantages, torch.tensor([[SQRT_HALF, -SQRT_HALF, 0.0, 0.0]]), atol=1e-5)
    mean_only = group_advantages(rewards, done, idle, 2, norm="mean")
    assert torch.allclose(mean_only.advantages, torch.tensor([[0.5, -0.5, 0.0, 0.0]]))
    assert mean_only.stats["rollout/group_count"] == 2
    assert mean_only.stats["rollout/group_zero_spread_frac"] == 0.5
    assert mean_only.stats["rollout/group_return_std"] == pytest.approx(SQRT_HALF / 2)


def test_a_one_member_group_and_a_zero_spread_group_get_no_signal():
    rewards, done, idle = tensors([[1.0, 0.0, 3.0]], [[True] * 3])
    alone = group_advantages(rewards, done, idle, 1, norm="std")
    assert torch.equal(alone.advantages, torch.zeros(1, 3))  # nothing to compare with: not NaN
    same = group_advantages(*tensors([[2.0, 2.0]], [[True, True]]), 2, norm="std")
    assert torch.equal(same.advantages, torch.zeros(1, 2))
    assert same.stats["rollout/group_zero_spread_frac"] == 1.0


def test_episodes_of_different_lengths_compare_their_sums_and_waiting_steps_get_nothing():
    # Env 0 finishes round 0 at t=0 and waits (t=1, 2); env 1 takes three steps. Both start round 1 at
    # t=3; env 0 finishes it, env 1 does not before the rollout ends: round 1 is left out whole.
    rewards, done, idle = tensors(
        [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]],
        [[True, False], [False, False], [False, True], [True, False], [False, False]],
        [[False, False], [True, False], [True, False], [False, False], [True, False]],
    )
    result = group_advantages(rewards, done, idle, 2, norm="mean")
    expected = torch.tensor([[0.5, -0.5], [0.0, -0.5], [0.0, -0.5], [0.0, 0.0], [0.0, 0.0]])
    assert torch.equal(result.advantages, expected)
    assert result.stats["rollout/group_idle_frac"] == pytest.approx(3 / 10)
    assert result.stats["rollout/group_unused_frac"] == pytest.approx(1 - 4 / 10)
    rounds = [(e.env, e.round, e.finished) for e in split_episodes(done, idle)]
    assert rounds == [(0, 0, True), (0, 1, True), (1, 0, True), (1, 1, False)]


def test_gigpo_adds_the_step_level_term_of_repeated_observations_within_a_group():
    # Group 0 (envs 0, 1): both start in state A; env 0 goes to B and gets 1, env 1 to C and gets 0.
    # Group 1 (envs 2, 3): also state A, reward 1 at once, then waiting; A is another anchor group there.
    A, B, C = 7, 8, 9
    rewards, done, idle = tensors(
        [[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]],
        [[False, False, True, True], [True, True, False, False]],
        [[False] * 4, [False, False, True, True]],
    )
    keys = torch.tensor([[A, A, A, A], [B, C, A, A]])
    result = group_advantages(
        rewards, done, idle, 2, norm="mean", gamma=0.5, state_keys=keys, step_weight=1.0
    )
    # Episode level: returns 1 vs 0 -> ±0.5; group 1: 1 vs 1 -> 0. Step level at (group 0, A): returns to
    # go 0 + 0.5·1 = 0.5 vs 0 -> ±0.25; B and C are alone; (group 1, A): 1 vs 1 -> 0.
    expected = torch.tensor([[0.75, -0.75, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0]])
    assert torch.allclose(result.advantages, expected)
    assert torch.allclose(result.returns[:, :2], torch.tensor([[0.5, 0.0], [1.0, 0.0]]))
    assert result.stats["rollout/step_groups"] == 2 and result.stats["rollout/step_group_size"] == 2
    weighted = group_advantages(
        rewards, done, idle, 2, norm="std", gamma=0.5, state_keys=keys, step_weight=2.0
    )
    assert weighted.advantages[0, 0] == pytest.approx(SQRT_HALF + 2 * SQRT_HALF, abs=1e-5)
    assert weighted.advantages[1, 0] == pytest.approx(SQRT_HALF, abs=1e-5)


def test_returns_to_go_are_discounted_to_the_episode_end():
    assert torch.allclose(returns_to_go(torch.tensor([1.0, 0.0, 2.0]), 0.5), torch.tensor([1.5, 1.0, 2.0]))


def buffer_of(rewards, terminated, truncated, frames=None):
    """A 2-step, 2-env buffer with these flags (the rest of each step is irrelevant to the advantages)."""
    buffer = RolloutBuffer(2, 2, 4)
    buffer.rewards = torch.tensor(rewards)
    buffer.terminated = torch.tensor(terminated)
    buffer.truncated = torch.tensor(truncated)
    frames = frames or [[0, 0], [1, 2]]
    buffer.images = [np.full((2, 2, 3), value, dtype=np.uint8) for row in frames for value in row]
    buffer.prompts = ["same prompt"] * 4
    return buffer


def test_a_truncated_episode_counts_with_what_it_collected_no_bootstrap():
    # Env 0 is cut by the time limit after collecting 1; env 1 terminates with 0. No value is added.
    buffer = buffer_of(
        [[1.0, 0.0], [0.0, 0.0]], [[False, False], [False, True]], [[False, False], [True, False]]
    )
    buffer.bootstrap_values[1, 0] = 100.0  # what GAE would add; the group estimators must ignore it
    buffer.compute_advantages(PpoConfig(advantage="grpo", group_size=2, group_norm="mean"), "grpo")
    assert torch.equal(buffer.advantages, torch.tensor([[0.5, -0.5], [0.5, -0.5]]))


def test_gigpo_through_the_buffer_keys_anchor_states_by_frame_and_prompt():
    buffer = buffer_of([[0.0, 0.0], [1.0, 0.0]], [[False, False], [True, True]], [[False] * 2] * 2)
    keys = buffer.observation_keys()
    assert keys[0, 0] == keys[0, 1] and keys[1, 0] != keys[1, 1]  # same first frame; different second
    ppo = PpoConfig(advantage="gigpo", group_size=2, group_norm="mean", gamma=0.5, step_weight=1.0)
    buffer.compute_advantages(ppo, "gigpo")
    assert torch.allclose(buffer.advantages, torch.tensor([[0.75, -0.75], [0.5, -0.5]]))
    assert buffer.group_stats["rollout/step_groups"] == 1
