"""Cosine learning-rate schedule with linear warm-up, over the real number of updates."""

from __future__ import annotations

import math

import torch


def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int = 0) -> float:
    """Learning rate at ``step``: linear warm-up from 0 to ``lr``, then cosine from ``lr`` to ``min_lr``.

    ``step`` counts scheduler steps from 0 (one per optimizer update). During warm-up
    ``lr · step / warmup_steps``; then ``min_lr + ½(lr − min_lr)(1 + cos(π·p))`` with
    ``p = (step − warmup_steps) / (total_steps − warmup_steps)``; exactly ``min_lr`` at
    ``total_steps`` and after, so extra steps (e.g. an early stop rounding) never raise the LR.

    Args:
        step: current step, ≥ 0.
        total_steps: step at which ``min_lr`` is reached, > 0.
        lr: peak learning rate, ≥ 0.
        min_lr: final learning rate, ≥ 0.
        warmup_steps: linear warm-up length, 0 ≤ warmup_steps ≤ total_steps.

    Returns:
        The learning rate as a Python float.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < 0 or lr < 0 or min_lr < 0:
        raise ValueError(f"step, lr and min_lr must be ≥ 0, got step={step}, lr={lr}, min_lr={min_lr}")
    if step >= total_steps:
        return float(min_lr)
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    lr: float,
    min_lr: float,
    warmup_steps: int = 0,
    *,
    proportional_groups: bool = False,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that sets every param group's LR to ``cosine_lr(step, ...)``.

    ``LambdaLR`` multiplies each group's initial LR by the lambda, so the lambda is
    ``cosine_lr(...) / lr`` and every group must start at ``lr`` (checked). The scheduler is a plain
    torch scheduler, so its ``state_dict`` checkpoints and resumes with the optimizer's.
    Call ``scheduler.step()`` once after each optimizer update.

    Args:
        optimizer: optimizer whose groups were created with learning rate ``lr``.
        total_steps: number of optimizer updates in the run, > 0.
        lr: peak learning rate, > 0.
        min_lr: final learning rate, ≥ 0.
        warmup_steps: linear warm-up length in updates.
        proportional_groups: Groups after the first may start at another LR (e.g. a value head's);
            each follows the same curve scaled by its own initial LR.

    Returns:
        The scheduler; construction already applies the step-0 LR to the optimizer.
    """
    if lr <= 0:
        raise ValueError(f"lr must be > 0 for a multiplicative scheduler, got {lr}")
    cosine_lr(0, total_steps, lr, min_lr, warmup_steps)  # validate arguments now, not at the first step
    for i, group in enumerate(optimizer.param_groups):
        # After a resume the optimizer state carries initial_lr; that is the base LambdaLR scales.
        base = group.get("initial_lr", group["lr"])
        if i and proportional_groups:
            continue  # this group follows the same curve scaled by its own initial LR
        if not math.isclose(base, lr, rel_tol=1e-9):
            raise ValueError(f"optimizer param group {i} has lr={base}, expected lr={lr}")

    def factor(step: int) -> float:
        return cosine_lr(step, total_steps, lr, min_lr, warmup_steps) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
