"""PPO loss terms and diagnostics: clipped policy and value losses, entropy, KL to a reference.

Every function takes per-sample (or per-token with a mask) tensors and returns a mean; the PPO
loop combines them as ``policy + vf_coef * value - ent_coef * entropy + kl_coef * kl``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    # where, not x * mask: a NaN/-inf at a padded position must not leak into the mean.
    mask = mask.to(torch.bool)
    total = torch.where(mask, x, torch.zeros_like(x)).sum()
    # An all-False mask yields 0 rather than NaN (nothing to average, nothing to penalise).
    return total / mask.sum().clamp(min=1)


def policy_loss(
    new_logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_range: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss, ``mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))`` with ``ρ = π_new/π_old``.

    Args:
        new_logp: [B] float, log π(a|s) under the current parameters (carries the gradient).
        old_logp: [B] float, log π(a|s) recorded at rollout time.
        advantages: [B] float, (normalised) advantages.
        clip_range: ε > 0.

    Returns:
        ``(loss, stats)``: ``loss`` is a scalar float32 tensor to minimise; ``stats`` holds detached
        scalar tensors (no host sync here, call ``.item()`` when logging):
        ``approx_kl`` = mean((ρ − 1) − log ρ), the low-variance non-negative estimator of
        KL(π_old‖π_new); ``clip_frac`` = fraction of samples with |ρ − 1| > ε (counted whether or
        not the clipped term was the active one, as in SB3/CleanRL).
    """
    if clip_range <= 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    log_ratio = new_logp.to(torch.float32) - old_logp.detach().to(torch.float32)
    ratio = log_ratio.exp()
    adv = advantages.detach().to(torch.float32)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    # max of the negated objectives = pessimistic bound; the clamp gives zero gradient when active.
    loss = torch.max(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "clip_frac": ((ratio - 1.0).abs() > clip_range).to(torch.float32).mean(),
        }
    return loss, stats


def value_loss(
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_range_vf: float | None,
) -> Tensor:
    """Value loss ``0.5 · mean(max((V − R)², (V_clip − R)²))``, ``V_clip = V_old + clip(V − V_old, ±ε_vf)``.

    Convention: the 0.5 factor and the max over clipped/unclipped errors follow CleanRL (and the
    original PPO2 baselines), so ``vf_coef`` values from those setups carry over. SB3 instead uses
    the clipped prediction alone and no 0.5, so SB3's ``vf_coef=c`` corresponds to ours ``2c``.
    With ``clip_range_vf=None`` this is plain ``0.5 · MSE``.

    Args:
        new_values: [B] float, V(s) under the current parameters (carries the gradient).
        old_values: [B] float, V(s) recorded at rollout time.
        returns: [B] float, GAE returns (targets).
        clip_range_vf: ε_vf > 0, or None to disable clipping. It is in value units, so it only
            makes sense when returns have a known scale.

    Returns:
        Scalar float32 tensor.
    """
    v = new_values.to(torch.float32)
    ret = returns.detach().to(torch.float32)
    err = (v - ret) ** 2
    if clip_range_vf is None:
        return 0.5 * err.mean()
    if clip_range_vf <= 0:
        raise ValueError(f"clip_range_vf must be > 0 or None, got {clip_range_vf}")
    v_old = old_values.detach().to(torch.float32)
    v_clipped = v_old + (v - v_old).clamp(-clip_range_vf, clip_range_vf)
    err_clipped = (v_clipped - ret) ** 2
    return 0.5 * torch.max(err, err_clipped).mean()


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean per-token entropy of the categorical distributions given by ``logits``, over masked tokens.

    Pass logits already divided by the sampling temperature, so the entropy is that of the
    distribution actually sampled from. Computed in float32; tokens with -inf logits (banned
    tokens) contribute 0 and keep the gradient finite.

    Args:
        logits: [B, T, V] any float dtype.
        mask: [B, T] bool, True for tokens to average over (e.g. action tokens).

    Returns:
        Scalar float32 tensor, in nats; 0 when the mask is empty.
    """
    logp = torch.log_softmax(logits.to(torch.float32), dim=-1)
    # Clamp so 0·(-inf) at banned tokens becomes 0 instead of NaN, in the value and the gradient.
    logp = logp.clamp(min=torch.finfo(torch.float32).min)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return _masked_mean(entropy, mask)


def kl_to_reference(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token KL(π‖π_ref) with Schulman's k3 estimator, averaged over masked tokens.

    For tokens sampled from π, ``k3 = r − 1 − log r`` with ``r = π_ref/π`` is unbiased for
    KL(π‖π_ref) and, unlike ``−log r``, never negative, so it is a stable penalty.

    Args:
        logp: [B, T] float, log π of the sampled tokens (carries the gradient).
        ref_logp: [B, T] float, log π_ref of the same tokens (frozen base model).
        mask: [B, T] bool, True for tokens that count (answer tokens, not padding).

    Returns:
        Scalar float32 tensor; 0 when the mask is empty.
    """
    log_r = ref_logp.detach().to(torch.float32) - logp.to(torch.float32)
    k3 = log_r.exp() - 1.0 - log_r
    return _masked_mean(k3, mask)


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """``1 − Var[R − V] / Var[R]``: 1 is a perfect value function, 0 no better than a constant.

    Args:
        values: [B] float, value predictions.
        returns: [B] float, targets.

    Returns:
        Python float; NaN when the returns have zero variance (undefined, as in SB3).
    """
    v = values.detach().to(torch.float32).flatten()
    r = returns.detach().to(torch.float32).flatten()
    var_r = r.var(unbiased=False)
    if var_r.item() == 0.0:
        return float("nan")
    return (1.0 - (r - v).var(unbiased=False) / var_r).item()
