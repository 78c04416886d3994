"""GAE against hand-computed rollouts. γ = λ = 0.5 (γλ = 0.25) keeps the arithmetic exact."""

import pytest
import torch

from vlmppo.rl.gae import compute_gae, normalize_advantages


def col(*xs, dtype=torch.float32):
    """A single-env [T, 1] column."""
    return torch.tensor(xs, dtype=dtype).unsqueeze(1)


def flags(T, *steps):
    out = torch.zeros(T, 1, dtype=torch.bool)
    for t in steps:
        out[t, 0] = True
    return out


def assert_close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-6)


def test_termination_mid_rollout_stops_bootstrap_and_recursion():
    # r = [1, 2, 3, 4], V = [0.5, 1, 1.5, 2], terminated at t=1, last_value = 4
    # δ3 = 4 + 0.5·4   − 2   = 4.0     A3 = 4.0
    # δ2 = 3 + 0.5·2   − 1.5 = 2.5     A2 = 2.5 + 0.25·4.0 = 3.5
    # δ1 = 2 + 0 (term) − 1  = 1.0     A1 = 1.0             (no carry across the boundary)
    # δ0 = 1 + 0.5·1   − 0.5 = 1.0     A0 = 1.0 + 0.25·1.0 = 1.25
    # returns = A + V = [1.75, 2.0, 5.0, 6.0]
    adv, ret = compute_gae(
        rewards=col(1, 2, 3, 4),
        values=col(0.5, 1, 1.5, 2),
        terminated=flags(4, 1),
        truncated=flags(4),
        next_values=col(999, 999, 999, 999),  # ignored: nothing is truncated
        last_value=torch.tensor([4.0]),
        gamma=0.5,
        gae_lambda=0.5,
    )
    assert_close(adv, [[1.25], [1.0], [3.5], [4.0]])
    assert_close(ret, [[1.75], [2.0], [5.0], [6.0]])


def test_truncation_bootstraps_from_final_observation_value():
    # Same rollout, but t=1 is a time-limit truncation and V(final obs) = next_values[1] = 6.
    # δ1 = 2 + 0.5·6 − 1 = 4.0          A1 = 4.0             (still no carry from A2)
    # δ0 = 1 + 0.5·1 − 0.5 = 1.0        A0 = 1.0 + 0.25·4.0 = 2.0
    # A2 = 3.5, A3 = 4.0 as before; returns = [2.5, 5.0, 5.0, 6.0]
    adv, ret = compute_gae(
        rewards=col(1, 2, 3, 4),
        values=col(0.5, 1, 1.5, 2),
        terminated=flags(4),
        truncated=flags(4, 1),
        next_values=col(999, 6, 999, 999),  # only the truncated step's entry is read
        last_value=torch.tensor([4.0]),
        gamma=0.5,
        gae_lambda=0.5,
    )
    assert_close(adv, [[2.0], [4.0], [3.5], [4.0]])
    assert_close(ret, [[2.5], [5.0], [5.0], [6.0]])


def test_rollout_ending_mid_episode_bootstraps_from_last_value():
    # r = [0, 0, 1], V = [1, 1, 3], no dones, last_value = 8
    # δ2 = 1 + 0.5·8 − 3 = 2.0       A2 = 2.0
    # δ1 = 0 + 0.5·3 − 1 = 0.5       A1 = 0.5 + 0.25·2.0 = 1.0
    # δ0 = 0 + 0.5·1 − 1 = −0.5      A0 = −0.5 + 0.25·1.0 = −0.25
    # returns = [0.75, 2.0, 5.0]
    adv, ret = compute_gae(
        col(0, 0, 1), col(1, 1, 3), flags(3), flags(3), col(0, 0, 0), torch.tensor([8.0]), 0.5, 0.5
    )
    assert_close(adv, [[-0.25], [1.0], [2.0]])
    assert_close(ret, [[0.75], [2.0], [5.0]])


def test_truncation_on_last_step_uses_final_obs_value_not_last_value():
    # last_value (100) is V of the reset observation, a different episode:
    # δ0 = 1 + 0.5·4 − 0 = 3
    adv, _ = compute_gae(col(1), col(0), flags(1), flags(1, 0), col(4), torch.tensor([100.0]), 0.5, 0.5)
    assert_close(adv, [[3.0]])


def test_termination_on_last_step_ignores_last_value_and_wins_over_truncation():
    # terminated and truncated both set: true terminal, δ0 = 1 + 0 − 0 = 1
    adv, _ = compute_gae(col(1), col(0), flags(1, 0), flags(1, 0), col(4), torch.tensor([100.0]), 0.5, 0.5)
    assert_close(adv, [[1.0]])


def test_two_envs_are_independent():
    # rows are steps t, columns envs n
    # env 0: r = [3, 0, 2], V = [1, 2, 1], terminated at t=0, last_value = 2
    #   δ2 = 2 + 0.5·2 − 1 = 2       A2 = 2
    #   δ1 = 0 + 0.5·1 − 2 = −1.5    A1 = −1.5 + 0.25·2 = −1.0
    #   δ0 = 3 + 0 − 1 = 2           A0 = 2               returns [3, 1, 3]
    # env 1: r = [0, 1, 1], V = [2, 2, 4], truncated at t=2 with V(final) = 10, last_value = 100 (unused)
    #   δ2 = 1 + 0.5·10 − 4 = 2      A2 = 2
    #   δ1 = 1 + 0.5·4 − 2 = 1       A1 = 1 + 0.25·2 = 1.5
    #   δ0 = 0 + 0.5·2 − 2 = −1      A0 = −1 + 0.25·1.5 = −0.625   returns [1.375, 3.5, 6]
    adv, ret = compute_gae(
        rewards=torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 1.0]]),
        values=torch.tensor([[1.0, 2.0], [2.0, 2.0], [1.0, 4.0]]),
        terminated=torch.tensor([[True, False], [False, False], [False, False]]),
        truncated=torch.tensor([[False, False], [False, False], [False, True]]),
        next_values=torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 10.0]]),
        last_value=torch.tensor([2.0, 100.0]),
        gamma=0.5,
        gae_lambda=0.5,
    )
    assert_close(adv, [[2.0, -0.625], [-1.0, 1.5], [2.0, 2.0]])
    assert_close(ret, [[3.0, 1.375], [1.0, 3.5], [3.0, 6.0]])


def test_gamma_one_lambda_one_gives_monte_carlo_returns():
    # Episodes end (terminate) at t=2 and t=4, so returns are plain reward sums to the episode end,
    # whatever the values are: G = [1+2+3, 2+3, 3, 4+5, 5] = [6, 5, 3, 9, 5]
    _, ret = compute_gae(
        rewards=col(1, 2, 3, 4, 5),
        values=col(0.3, -1.0, 2.0, 0.5, 7.0),
        terminated=flags(5, 2, 4),
        truncated=flags(5),
        next_values=col(0, 0, 0, 0, 0),
        last_value=torch.tensor([50.0]),
        gamma=1.0,
        gae_lambda=1.0,
    )
    assert_close(ret, [[6.0], [5.0], [3.0], [9.0], [5.0]])


def test_lambda_zero_gives_one_step_td_errors():
    # γ = 0.9, r = [1, 0, 2], V = [0.5, 1, 2], last_value = 3
    # A0 = 1 + 0.9·1 − 0.5 = 1.4;  A1 = 0 + 0.9·2 − 1 = 0.8;  A2 = 2 + 0.9·3 − 2 = 2.7
    adv, _ = compute_gae(
        col(1, 0, 2), col(0.5, 1, 2), flags(3), flags(3), col(0, 0, 0), torch.tensor([3.0]), 0.9, 0.0
    )
    assert_close(adv, [[1.4], [0.8], [2.7]])


def test_outputs_are_float32_and_detached_for_bf16_values_with_grad():
    values = col(1, 1, 3, dtype=torch.bfloat16).requires_grad_()
    adv, ret = compute_gae(
        col(0, 0, 1), values, flags(3), flags(3), col(0, 0, 0), torch.tensor([8.0]), 0.5, 0.5
    )
    assert adv.dtype == ret.dtype == torch.float32
    assert not adv.requires_grad and not ret.requires_grad
    assert_close(adv, [[-0.25], [1.0], [2.0]])


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="values"):
        compute_gae(col(1, 2), col(1), flags(2), flags(2), col(0, 0), torch.tensor([0.0]), 0.9, 0.9)
    with pytest.raises(ValueError, match="last_value"):
        compute_gae(col(1), col(1), flags(1), flags(1), col(0), torch.tensor([0.0, 0.0]), 0.9, 0.9)


def test_normalize_advantages_gives_zero_mean_unit_std():
    # mean 2.5, population std sqrt(1.25) = 1.118034 → [−1.5, −0.5, 0.5, 1.5] / 1.118034
    out = normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(
        out, torch.tensor([-1.341641, -0.447214, 0.447214, 1.341641]), atol=1e-5, rtol=0
    )


def test_normalize_advantages_of_constant_or_single_value_is_zero_not_nan():
    assert torch.equal(normalize_advantages(torch.tensor([3.0, 3.0, 3.0])), torch.zeros(3))
    assert torch.equal(normalize_advantages(torch.tensor([7.0])), torch.zeros(1))
