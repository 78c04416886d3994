"""Token-level SFT loss and accuracy, summed (not averaged) so that micro-batches and ranks add up exactly."""

from __future__ import annotations

import torch

from vlmppo.models.inputs import IGNORE_INDEX


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy summed over the answer tokens, their count, and how many the argmax predicts.

    Only the positions that carry a label are upcast to fp32 (answers are short next to prompt + image
    tokens, so this is a small fraction of the full ``[B, T, V]`` logits).

    Args:
        logits: ``[B, T, V]`` from the model's forward.
        labels: ``[B, T]``, ``IGNORE_INDEX`` where no loss is taken.

    Returns:
        ``(loss_sum, n_tokens, n_correct)``; ``loss_sum`` is a 0-d tensor with gradient.
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX  # logits at t predict the token at t + 1
    picked = logits[:, :-1][keep].float()  # [N, V]
    gold = target[keep]
    loss = torch.nn.functional.cross_entropy(picked, gold, reduction="sum")
    correct = int((picked.argmax(-1) == gold).sum()) if gold.numel() else 0
    return loss, int(gold.numel()), correct
