"""Token log-probs and the RL4VLM action log-prob ``λ·Σ log p(thought) + w·Σ log p(key) + Σ log p(action)``.

The action span comes from the text (the parser's character span of the ``"action"`` value)
mapped to tokens through the tokenizer's character offsets, so it works for any model family
without hard-coded token ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, target_ids: Tensor, temperature: float) -> Tensor:
    """Log-probability of each target token under ``softmax(logits / temperature)``, in float32.

    Use the sampling temperature so the log-probs are those of the distribution that produced the
    answer. ``logits[:, t]`` must already be the prediction for ``target_ids[:, t]`` (shift the
    model's logits by one before calling).

    Args:
        logits: [B, T, V] any float dtype (bf16 is upcast before the softmax).
        target_ids: [B, T] int64 token ids.
        temperature: > 0.

    Returns:
        [B, T] float32 log-probs (differentiable w.r.t. ``logits``).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scaled = logits.to(torch.float32) / temperature
    # gather − logsumexp avoids materialising a second [B, T, V] float32 tensor (log_softmax output).
    picked = scaled.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def action_token_mask(
    offsets: Sequence[tuple[int, int]],
    span: tuple[int, int] | None,
    answer_len: int,
) -> tuple[Tensor, Tensor]:
    """Split an answer's tokens into thought tokens and action tokens from a character span.

    ``offsets`` are the fast tokenizer's ``(start, end)`` character offsets of the answer tokens
    (``return_offsets_mapping=True`` on the answer text alone). The offsets must describe the same
    token ids the log-probs are computed for: re-tokenising decoded text can differ from what was
    sampled, so score the ids these offsets come from.

    The first token that overlaps ``span`` (``start < span_end`` and ``end > span_start``) opens
    the action part; it and every later token are action tokens, including JSON that follows the
    value (e.g. ``"thoughts"`` written after ``"action"``) and end-of-turn tokens. Everything
    strictly before it is thought. Special tokens have offset ``(0, 0)``: they never overlap the
    span, so one appended at the end falls after it (action) and a leading BOS before it
    (thought). Tokens past ``len(offsets)`` up to ``answer_len`` (e.g. the EOS that ``generate``
    emitted but the text does not contain) are also action tokens.

    With ``span=None`` (no parseable action) every token is a thought token.

    Args:
        offsets: T_off pairs of character offsets, T_off ≤ ``answer_len``.
        span: ``(start, end)`` character span of the action value in the answer text, or None.
        answer_len: T_ans, the number of answer tokens the masks must cover.

    Returns:
        ``(thought_mask, action_mask)``, each [T_ans] bool, disjoint and together covering all
        T_ans tokens.

    Raises:
        ValueError: if ``answer_len < len(offsets)``, the span is empty, or no token overlaps it.
    """
    if answer_len < len(offsets):
        raise ValueError(f"answer_len={answer_len} is shorter than the {len(offsets)} offsets given")
    thought = torch.zeros(answer_len, dtype=torch.bool)
    action = torch.zeros(answer_len, dtype=torch.bool)
    if span is None:
        thought[:] = True
        return thought, action
    span_start, span_end = span
    if span_end <= span_start:
        raise ValueError(f"action span {span} is empty")
    first = next(
        (i for i, (start, end) in enumerate(offsets) if start < span_end and end > span_start),
        None,
    )
    if first is None:
        # A span no token covers means the offsets and the parsed text disagree: a caller bug.
        last_end = max((end for _, end in offsets), default=0)
        raise ValueError(f"no answer token overlaps action span {span} (offsets end at character {last_end})")
    thought[:first] = True
    action[first:] = True
    return thought, action


# The key of the action value, as the parser accepts it ("action", 'action' or bare, any case), its colon and
# the value's opening quote: what stands between the thoughts and the value the parser's span starts at.
_ACTION_KEY = re.compile(r"""(?:["']action["']|\baction)\s*:\s*["']?\s*\Z""", re.IGNORECASE)


def action_key_start(text: str, span: tuple[int, int] | None) -> int | None:
    """Character offset where the ``"action":`` key of the value at ``span`` begins; None without one
    (no parsed action, or a value written without a key)."""
    if span is None:
        return None
    match = _ACTION_KEY.search(text, 0, span[0])
    return match.start() if match else None


def action_key_mask(
    offsets: Sequence[tuple[int, int]], key_start: int | None, thought_mask: Tensor
) -> Tensor:
    """The thought tokens that write the ``"action":`` key: those ending after ``key_start``.

    RL4VLM counts the key with the action (weight 1, not λ): ``ppo.action_key_coef``. ``action_token_mask``
    puts it in the thoughts, since its action part starts at the value.

    Args:
        offsets: T_off character offsets of the answer tokens (as for ``action_token_mask``).
        key_start: From ``action_key_start``; None gives an empty mask.
        thought_mask: [T_ans] bool from ``action_token_mask``.

    Returns:
        [T_ans] bool, a subset of ``thought_mask`` (its last tokens).
    """
    key = torch.zeros_like(thought_mask)
    if key_start is None or not offsets:
        return key
    ends = torch.tensor([end for _, end in offsets])
    key[: len(offsets)] = thought_mask[: len(offsets)] & (ends > key_start)
    return key


def mixed_action_logprob(
    token_logp: Tensor,
    thought_mask: Tensor,
    action_mask: Tensor,
    thought_coef: float,
    key_mask: Tensor | None = None,
    key_coef: float = 1.0,
) -> Tensor:
    """RL4VLM action log-prob ``λ·Σ_thought log p + w·Σ_key log p + Σ_action log p`` per sequence.

    Positions where every mask is False (padding, prompt) never count, even if their log-prob is
    -inf or NaN.

    Args:
        token_logp: [B, T] float32 per-token log-probs of the answer tokens.
        thought_mask: [B, T] bool, thought tokens.
        action_mask: [B, T] bool, action tokens; must not overlap ``thought_mask``.
        thought_coef: λ ≥ 0 scaling the thought tokens (0 ignores the reasoning, 1 is the full
            sequence log-prob).
        key_mask: [B, T] bool, the ``"action":`` key tokens (``action_key_mask``); disjoint from both.
        key_coef: w, their weight (``ppo.action_key_coef``; 1 as RL4VLM).

    Returns:
        [B] float32 log π(a|s) (differentiable w.r.t. ``token_logp``).
    """
    # Masks are built on the host from character offsets; the log-probs may live on a GPU.
    masks = [thought_mask, action_mask] + ([key_mask] if key_mask is not None else [])
    masks = [m.to(device=token_logp.device, dtype=torch.bool) for m in masks]
    if int(sum(m.long() for m in masks).max()) > 1:
        raise ValueError("thought, action and key masks overlap; a token must be one of them")
    zero = torch.zeros_like(token_logp)
    # where, not multiplication by the mask: 0 · -inf at a padded position would be NaN.
    sums = [torch.where(m, token_logp, zero).sum(dim=-1) for m in masks]
    out = thought_coef * sums[0] + sums[1]
    return out + key_coef * sums[2] if key_mask is not None else out
