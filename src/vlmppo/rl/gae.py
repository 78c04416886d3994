"""Generalised advantage estimation over a vectorised, auto-resetting rollout.

Pure tensor math, no model or env: the rollout buffer (``rl/buffer.py``) calls `compute_gae` once per
rollout and `normalize_advantages` on the flattened batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    next_values: Tensor,
    last_value: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """GAE(γ, λ) advantages and returns for a rollout of T steps in N auto-resetting envs.

    Step ``t`` of env ``n`` saw observation ``s_t``, got ``rewards[t, n]`` and then either continued
    (the next row holds ``s_{t+1}``), *terminated* (a true end: the value after it is 0) or was
    *truncated* (a time limit: the episode could have gone on, so we bootstrap from the value of
    its final observation, ``next_values[t, n]``, which the rollout computes before the env resets).
    In both done cases the next row belongs to a new episode, so the recursion does not carry
    advantage across the boundary. After the last row, an env that is not done bootstraps from
    ``last_value[n]``, the value of the observation the next rollout will start from.
    If a step is flagged both terminated and truncated, termination wins (no bootstrap).

    With ``V'_t`` the next value chosen as above and ``d_t = terminated | truncated``::

        δ_t = r_t + γ·V'_t − V_t
        A_t = δ_t + γ·λ·(1 − d_t)·A_{t+1}          (A_T = 0)
        returns_t = A_t + V_t

    Args:
        rewards: [T, N] float, reward of each step.
        values: [T, N] float, V(s_t) recorded during the rollout.
        terminated: [T, N] bool, episode ended in a terminal state at step t.
        truncated: [T, N] bool, episode was cut by a time limit at step t.
        next_values: [T, N] float, V(final observation) where ``truncated`` is set; every other
            entry is ignored (fill it with anything, e.g. 0).
        last_value: [N] float, V(s_T) for the observation after the last step.
        gamma: discount γ in [0, 1].
        gae_lambda: GAE λ in [0, 1] (not the thought coefficient).

    Returns:
        ``(advantages, returns)``, both [T, N] float32 on the device of ``rewards``, detached.
        Inputs are torch tensors only (the rollout lives in torch); any float dtype is cast to
        float32 so bf16 values do not accumulate rounding error through the recursion.

    Raises:
        ValueError: on mismatched shapes or γ, λ outside [0, 1].
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [T, N], got shape {tuple(rewards.shape)}")
    shape = rewards.shape
    for name, tensor in (
        ("values", values),
        ("terminated", terminated),
        ("truncated", truncated),
        ("next_values", next_values),
    ):
        if tensor.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)} like rewards, got {tuple(tensor.shape)}")
    if last_value.shape != shape[1:]:
        raise ValueError(f"last_value must have shape ({shape[1]},), got {tuple(last_value.shape)}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= gae_lambda <= 1.0):
        raise ValueError(
            f"gamma and gae_lambda must be in [0, 1], got gamma={gamma}, gae_lambda={gae_lambda}"
        )

    device = rewards.device
    # Detach: the value estimates are targets here, never a path for gradients.
    r = rewards.detach().to(device, torch.float32)
    v = values.detach().to(device, torch.float32)
    term = terminated.detach().to(device, torch.bool)
    trunc = truncated.detach().to(device, torch.bool)
    v_final = next_values.detach().to(device, torch.float32)
    v_last = last_value.detach().to(device, torch.float32)

    # Value of what follows each step: the next row, or last_value after the final row ...
    v_next = torch.cat([v[1:], v_last.unsqueeze(0)], dim=0)
    # ... except across an episode boundary, where the next row is a fresh episode's start.
    v_next = torch.where(trunc, v_final, v_next)
    # Applied last so termination wins when a step is flagged both ways.
    v_next = torch.where(term, torch.zeros_like(v_next), v_next)
    deltas = r + gamma * v_next - v

    carry = (~(term | trunc)).to(torch.float32) * (gamma * gae_lambda)
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(v_last)
    for t in range(shape[0] - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages, advantages + v


def advantage_moments(adv: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and population standard deviation of all elements of ``adv`` (``[...]`` float32).

    The statistics of one process's advantages: a data-parallel run replaces this function with one that
    all-reduces the sums over ranks, so every rank normalises by the statistics of the whole rollout.
    """
    return adv.mean(), adv.std(unbiased=False)


def normalize_advantages(
    adv: Tensor,
    eps: float = 1e-8,
    moments: Callable[[Tensor], tuple[Tensor, Tensor]] = advantage_moments,
) -> Tensor:
    """Standardise advantages to zero mean and unit standard deviation over all elements.

    Uses the population standard deviation (``unbiased=False``) so a batch of one, or of equal
    advantages, maps to zeros instead of NaN; on real batch sizes the difference is negligible.

    Args:
        adv: [...] float advantages (usually the flattened [T * N] batch).
        eps: added to the standard deviation to avoid dividing by zero.
        moments: ``adv`` (float32) -> its (mean, std); ``advantage_moments`` in one process.

    Returns:
        Tensor of the same shape, float32.
    """
    adv = adv.to(torch.float32)
    mean, std = moments(adv)
    return (adv - mean) / (std + eps)
