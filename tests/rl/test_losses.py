"""PPO loss terms against hand-computed values; gradients checked with autograd."""

import math

import pytest
import torch

from vlmppo.rl.losses import entropy_from_logits, explained_variance, kl_to_reference, policy_loss, value_loss

CLIP = 0.2


def logp_for_ratio(*ratios):
    """new_logp (requiring grad) such that exp(new − old) = ratio with old_logp = 0."""
    return torch.tensor([math.log(r) for r in ratios], requires_grad=True)


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def test_policy_loss_clipped_for_high_ratio_with_positive_advantage():
    # ρ = 1.5, A = 2: min(1.5·2, 1.2·2) = 2.4 → loss −2.4; the clamp is active so no gradient
    new = logp_for_ratio(1.5)
    loss, stats = policy_loss(new, torch.zeros(1), torch.tensor([2.0]), CLIP)
    assert loss.item() == pytest.approx(-2.4, abs=1e-6)
    assert grad_of(loss, new).item() == 0.0
    assert stats["clip_frac"].item() == 1.0


def test_policy_loss_unclipped_inside_range():
    # ρ = 1.1, A = 2: loss −2.2; d(−A·ρ)/d logp = −A·ρ = −2.2
    new = logp_for_ratio(1.1)
    loss, stats = policy_loss(new, torch.zeros(1), torch.tensor([2.0]), CLIP)
    assert loss.item() == pytest.approx(-2.2, abs=1e-6)
    assert grad_of(loss, new).item() == pytest.approx(-2.2, abs=1e-6)
    assert stats["clip_frac"].item() == 0.0


def test_policy_loss_negative_advantage_clips_low_ratio():
    # ρ = 0.5, A = −1: min(−0.5, 0.8·−1 = −0.8) = −0.8 → loss 0.8, clamp active, no gradient
    new = logp_for_ratio(0.5)
    loss, _ = policy_loss(new, torch.zeros(1), torch.tensor([-1.0]), CLIP)
    assert loss.item() == pytest.approx(0.8, abs=1e-6)
    assert grad_of(loss, new).item() == 0.0


def test_policy_loss_negative_advantage_high_ratio_is_not_clipped():
    # Pessimistic bound: ρ = 1.5, A = −1: min(−1.5, −1.2) = −1.5 → loss 1.5, gradient −A·ρ = 1.5.
    # clip_frac still counts it (ratio outside the range).
    new = logp_for_ratio(1.5)
    loss, stats = policy_loss(new, torch.zeros(1), torch.tensor([-1.0]), CLIP)
    assert loss.item() == pytest.approx(1.5, abs=1e-6)
    assert grad_of(loss, new).item() == pytest.approx(1.5, abs=1e-6)
    assert stats["clip_frac"].item() == 1.0


def test_policy_loss_positive_advantage_low_ratio_is_not_clipped():
    # ρ = 0.5, A = 2: min(1.0, 0.8·2 = 1.6) = 1.0 → loss −1.0
    new = logp_for_ratio(0.5)
    loss, _ = policy_loss(new, torch.zeros(1), torch.tensor([2.0]), CLIP)
    assert loss.item() == pytest.approx(-1.0, abs=1e-6)
    assert grad_of(loss, new).item() == pytest.approx(-1.0, abs=1e-6)


def test_policy_loss_batch_mean_stats_and_per_sample_gradients():
    # ρ = [1.5, 0.5], A = [2, 2]: per sample [−2.4, −1.0] → loss −1.7
    # grads: [0 (clipped), −A·ρ/B = −1.0/2 = −0.5]
    # approx_kl = mean((ρ−1) − ln ρ) = mean(0.5 − 0.405465, −0.5 + 0.693147) = mean(0.094535, 0.193147) = 0.143841
    # clip_frac = 2/2: both ratios are outside [0.8, 1.2]
    new = logp_for_ratio(1.5, 0.5)
    loss, stats = policy_loss(new, torch.zeros(2), torch.tensor([2.0, 2.0]), CLIP)
    assert loss.item() == pytest.approx(-1.7, abs=1e-6)
    torch.testing.assert_close(grad_of(loss, new), torch.tensor([0.0, -0.5]), atol=1e-6, rtol=0)
    assert stats["approx_kl"].item() == pytest.approx(0.143841, abs=1e-5)
    assert stats["clip_frac"].item() == 1.0
    assert not stats["approx_kl"].requires_grad


def test_policy_loss_stats_are_zero_when_policy_unchanged():
    logp = torch.tensor([-1.0, -3.0])
    loss, stats = policy_loss(logp, logp, torch.tensor([1.0, -3.0]), CLIP)
    # ρ = 1 everywhere → loss = −mean(A) = 1.0
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    assert stats["approx_kl"].item() == 0.0
    assert stats["clip_frac"].item() == 0.0


def test_value_loss_without_clipping_is_half_mse():
    # errors² = [(1−2)², (3−0)²] = [1, 9] → 0.5·mean = 2.5
    loss = value_loss(torch.tensor([1.0, 3.0]), torch.tensor([50.0, 50.0]), torch.tensor([2.0, 0.0]), None)
    assert loss.item() == pytest.approx(2.5, abs=1e-6)


def test_value_loss_clipped_when_update_moves_value_too_far():
    # V_old 0, V 1, R 2, ε 0.2: unclipped (1−2)² = 1, clipped V 0.2 → (0.2−2)² = 3.24
    # max = 3.24 → 0.5·3.24 = 1.62; the clipped term is constant in V, so no gradient
    new = torch.tensor([1.0], requires_grad=True)
    loss = value_loss(new, torch.tensor([0.0]), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(1.62, abs=1e-6)
    assert grad_of(loss, new).item() == 0.0


def test_value_loss_unclipped_error_wins_when_it_is_larger():
    # V_old 0, V 1, R 0: unclipped 1, clipped (0.2−0)² = 0.04 → max 1 → loss 0.5, grad 0.5·2·(1−0) = 1
    new = torch.tensor([1.0], requires_grad=True)
    loss = value_loss(new, torch.tensor([0.0]), torch.tensor([0.0]), 0.2)
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    assert grad_of(loss, new).item() == pytest.approx(1.0, abs=1e-6)


def test_value_loss_inside_clip_range_equals_unclipped():
    # V_old 0, V 0.1, R 1: both errors (0.1−1)² = 0.81 → 0.405
    loss = value_loss(torch.tensor([0.1]), torch.tensor([0.0]), torch.tensor([1.0]), 0.2)
    assert loss.item() == pytest.approx(0.405, abs=1e-6)


def test_entropy_is_masked_mean_over_tokens():
    # token 0: uniform over 4 → ln 4 = 1.386294
    # token 1: uniform over 2 of 4 (two −inf logits) → ln 2 = 0.693147
    # token 2: masked out (nearly deterministic, ≈ 0 nats; would pull the mean down)
    # mean = (1.386294 + 0.693147) / 2 = 1.039721
    inf = float("inf")
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, -inf, -inf], [100.0, 0.0, 0.0, 0.0]]])
    logits.requires_grad_()
    mask = torch.tensor([[True, True, False]])
    ent = entropy_from_logits(logits, mask)
    assert ent.item() == pytest.approx(1.039721, abs=1e-5)
    assert torch.isfinite(grad_of(ent, logits)).all()


def test_entropy_of_bf16_logits_is_float32():
    ent = entropy_from_logits(torch.zeros(1, 1, 8, dtype=torch.bfloat16), torch.ones(1, 1, dtype=torch.bool))
    assert ent.dtype == torch.float32
    assert ent.item() == pytest.approx(math.log(8), abs=1e-6)


def test_kl_to_reference_k3_masked_mean_and_gradient():
    # token 0: log π = ln 0.5, log π_ref = ln 0.25 → r = 0.5, k3 = 0.5 − 1 − ln 0.5 = 0.193147
    # token 1: equal → 0; token 2: masked out (would add a large KL)
    # mean over 2 tokens = 0.0965736; d k3 / d logπ = 1 − r → [0.5, 0] / 2 = [0.25, 0]
    logp = torch.tensor([[math.log(0.5), -1.0, -0.01]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), -1.0, -9.0]])
    kl = kl_to_reference(logp, ref, torch.tensor([[True, True, False]]))
    assert kl.item() == pytest.approx(0.0965736, abs=1e-6)
    torch.testing.assert_close(grad_of(kl, logp), torch.tensor([[0.25, 0.0, 0.0]]), atol=1e-6, rtol=0)


def test_kl_to_reference_with_empty_mask_is_zero():
    assert (
        kl_to_reference(torch.zeros(1, 2), torch.ones(1, 2), torch.zeros(1, 2, dtype=torch.bool)).item()
        == 0.0
    )


def test_explained_variance_hand_values():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == pytest.approx(1.0)
    # constant prediction explains nothing
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    # R − V = [−1, 0, 0, 1]: Var 0.5; Var R = 1.25 → 1 − 0.4 = 0.6
    assert explained_variance(torch.tensor([2.0, 2.0, 3.0, 3.0]), returns) == pytest.approx(0.6, abs=1e-6)


def test_explained_variance_is_nan_for_constant_returns():
    assert math.isnan(explained_variance(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 3.0])))
