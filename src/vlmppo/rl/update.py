"""Phase 3 of a PPO update: epochs of shuffled minibatches, micro-batches with gradient accumulation.

Loss per minibatch = clipped policy loss + vf_coef · clipped value loss − ent_coef · entropy of the action
tokens + kl_coef · KL(π ‖ π_ref) over the answer tokens, π_ref being the policy PPO started from (its
log-probs come with the rollout: ``ActorCritic.reference_logprobs``). A minibatch whose loss or gradient is
NaN/inf is skipped (no optimizer step) and counted; ``ppo.max_bad_minibatches`` in a row abort the run before
anything non-finite can be checkpointed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlmppo.config import Config
from vlmppo.errors import VlmppoError
from vlmppo.models.prompt_embeds import embed_prompts
from vlmppo.rl.buffer import Minibatch, RolloutBuffer, Samples
from vlmppo.rl.logprob import mixed_action_logprob
from vlmppo.rl.losses import entropy_from_logits, kl_to_reference, policy_loss, value_loss
from vlmppo.rl.policy import ActorCritic, Sampled

if TYPE_CHECKING:
    from accelerate import Accelerator


class TrainingDiverged(VlmppoError):
    """The loss or gradients stayed NaN/inf for too many minibatches in a row."""


def collate(policy: ActorCritic, samples: Samples) -> tuple[Sampled, dict[str, torch.Tensor]]:
    """Rebuild the prompt batch and append the answer ids (right-padded): the input the rollout scored.

    Args:
        policy: The actor-critic (its processor builds the prompts; tensors go to its device).
        samples: ``B`` rollout steps (``RolloutBuffer.samples``): frames, prompt texts, the earlier turns
            each prompt showed (``env.history``), answer ids ``[B, W]`` with ``answer_mask`` ``[B, W]``,
            ``W`` the longest of their answers.

    Returns:
        ``(sampled, masks)`` on the policy's device:

        - ``sampled.sequences``: ``[B, P + W]`` long, the left-padded prompt ids (``P`` = the longest
          prompt) followed by the answer ids, the tokenizer's pad id after each answer;
        - ``sampled.attention_mask``: ``[B, P + W]`` long, 1 on prompt and answer tokens;
        - ``sampled.answer_mask``: ``[B, W]`` bool; ``sampled.prompt_len``: ``P``;
        - ``sampled.extra``: the prompt batch's other inputs over its ``N`` images (``N = B`` without
          history), by family: Qwen2-VL / Qwen2.5-VL ``pixel_values`` ``[n_patches, D]`` with
          ``image_grid_thw`` ``[N, 3]`` and ``mm_token_type_ids`` ``[B, P]``; LLaVA ``pixel_values``
          ``[N, C, H, W]``; LLaVA-NeXT ``pixel_values`` ``[N, n_tiles, C, H, W]`` with ``image_sizes``
          ``[N, 2]``;
        - ``sampled.prompt``: the prompts' ``PromptEmbeddings`` when nothing trained reaches them
          (``ActorCritic.prompt_embeddings_constant``; ``score`` then starts from them), else None;
        - ``masks``: ``thought``, ``action``, ``key``: ``[B, W]`` bool token masks of the answers.
    """
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs

    images = [to_pil(image) for image in samples.images]
    batch = build_inputs(policy.loaded, images, samples.prompts, histories=samples.histories)
    batch = batch.to(policy.device)
    pad_id = policy.loaded.tokenizer.pad_token_id
    answers = samples.answer_ids.masked_fill(~samples.answer_mask, pad_id).to(policy.device)
    mask = samples.answer_mask.to(policy.device)
    extra = {key: value for key, value in batch.items() if key not in ("input_ids", "attention_mask")}
    sampled = Sampled(
        sequences=torch.cat([batch["input_ids"], answers], dim=1),
        attention_mask=torch.cat([batch["attention_mask"], mask.long()], dim=1),
        prompt_len=batch["input_ids"].shape[1],
        answer_mask=mask,
        extra=extra,
        texts=[],
    )
    if policy.update_from_embeddings and policy.prompt_embeddings_constant():
        # Nothing the update trains reaches the prompts' embeddings, so they are built as the rollout built
        # them (``embed_prompts``: each frame's features from the rollout's cache when it still holds them, the
        # M-RoPE index on the host) instead of by the model's forward, which runs the vision tower on every
        # frame again. The same numbers: the rollout's scoring pass takes this path too.
        with policy.autocast():
            sampled.prompt = embed_prompts(policy.loaded.model, batch)
    masks = {"thought": samples.thought_mask, "action": samples.action_mask, "key": samples.key_mask}
    return sampled, {name: mask.to(policy.device) for name, mask in masks.items()}


class BadMinibatchGuard:
    """Counts skipped (non-finite) minibatches; raises after ``limit`` in a row."""

    def __init__(self, limit: int, consecutive: int = 0):
        self.limit, self.consecutive, self.total = limit, consecutive, 0

    def good(self) -> None:
        self.consecutive = 0

    def bad(self, what: str) -> None:
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            raise TrainingDiverged(
                f"PPO diverged: {what} was NaN/inf in {self.consecutive} minibatches in a row "
                f"(ppo.max_bad_minibatches={self.limit}); no checkpoint was written from the bad state.",
                hint="Resume from the last checkpoint with a lower ppo.lr, a smaller ppo.max_grad_norm, or "
                "model.dtype=float32.",
            )


def micro_loss(
    policy: ActorCritic, samples: Samples, cfg: Config, scorer: torch.nn.Module | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The PPO loss of one micro-batch (a mean over its samples) and its statistics.

    ``scorer``: the DDP/DeepSpeed-wrapped ``ScoringModule`` of a data-parallel run (its forward is
    ``policy.score``, and arms the gradient all-reduce); None scores with ``policy.score`` directly.
    """
    ppo, device = cfg.ppo, policy.device
    sampled, masks = collate(policy, samples)
    action = masks["action"]
    score = scorer if scorer is not None else policy.score
    token_logp, new_values, logits = score(sampled, temperature=ppo.temperature, return_logits=True)
    new_logp = mixed_action_logprob(
        token_logp, masks["thought"], action, ppo.thought_coef, masks["key"], ppo.action_key_coef
    )
    surrogate, ratio_stats = policy_loss(
        new_logp, samples.old_logp.to(device), samples.advantages.to(device), ppo.clip_range
    )
    critic = (  # GRPO/GiGPO: no value head, no value loss
        value_loss(new_values, samples.old_values.to(device), samples.returns.to(device), ppo.clip_range_vf)
        if policy.value_head is not None
        else torch.zeros((), device=device)
    )
    # Entropy of the action tokens only: gather those rows first (not a [B, T, V] pass); without an
    # entropy bonus it is a diagnostic and carries no gradient.
    action_logits = (logits if ppo.ent_coef else logits.detach())[action]
    entropy = entropy_from_logits(
        action_logits[None], torch.ones(action_logits.shape[:1], dtype=torch.bool, device=logits.device)[None]
    )
    loss = surrogate + ppo.vf_coef * critic - ppo.ent_coef * entropy
    stats = {
        "policy_loss": surrogate.item(),
        **({"value_loss": critic.item()} if policy.value_head is not None else {}),
        "entropy": entropy.item(),
        "approx_kl": ratio_stats["approx_kl"].item(),
        "clip_frac": ratio_stats["clip_frac"].item(),
    }
    if ppo.kl_coef:  # the reference's log-probs were computed once, at rollout time
        kl = kl_to_reference(token_logp, samples.ref_logp.to(device), sampled.answer_mask)
        loss = loss + ppo.kl_coef * kl
        stats["kl_ref"] = kl.item()
    return loss, stats


def value_warmup_loss(
    policy: ActorCritic, samples: Samples, cfg: Config
) -> tuple[torch.Tensor, dict[str, float]]:
    """``ppo.value_warmup_updates``: vf_coef x the value loss of one micro-batch, with the model run on the
    prompts without gradient, so only the value head learns (the policy's weights get no gradient at all)."""
    ppo, device = cfg.ppo, policy.device
    sampled, _ = collate(policy, samples)
    p = sampled.prompt_len  # the prompts alone: the value reads their last token
    prompts = {"input_ids": sampled.sequences[:, :p], "attention_mask": sampled.attention_mask[:, :p]}
    values = policy.values(policy.prompt_features({**prompts, **sampled.extra}, sampled.prompt))
    critic = value_loss(values, samples.old_values.to(device), samples.returns.to(device), ppo.clip_range_vf)
    return ppo.vf_coef * critic, {"value_loss": critic.item()}


def accumulate_minibatch(
    policy: ActorCritic,
    minibatch: Minibatch,
    cfg: Config,
    backward: Callable[[torch.Tensor], None],
    scorer: torch.nn.Module | None = None,
    value_only: bool = False,
) -> tuple[bool, dict[str, list[float]]]:
    """Forward and backward of ``minibatch``'s micro-batches, gradients accumulated (not stepped).

    Each micro-batch's loss is weighted by its share of the rank's minibatch, so the accumulated gradient
    is that of the minibatch's mean loss; DDP then averages it over ranks, which is the gradient of the
    global minibatch (every rank's minibatch has the same size). Only the last micro-batch all-reduces
    (``GradientSync``).

    ``value_only``: the value warm-up's loss (``value_warmup_loss``) instead of PPO's.

    Returns:
        ``(finite, stats)``: False when a loss was NaN/inf (one process stops at it; under several every
        rank runs all its micro-batches, so that no rank waits alone in an all-reduce, and the caller
        agrees on the flag); the micro-batches' statistics.
    """
    from vlmppo.rl.distributed import GradientSync

    sync = GradientSync(scorer)
    parallel = scorer is not None and hasattr(scorer, "no_sync")
    stats: dict[str, list[float]] = {}
    finite = True
    micro = list(minibatch.micro_batches(cfg.ppo.micro_batch_size))
    for index, samples in enumerate(micro):
        with sync.micro(last=index == len(micro) - 1):
            if value_only:
                loss, micro_stats = value_warmup_loss(policy, samples, cfg)
            else:
                loss, micro_stats = micro_loss(policy, samples, cfg, scorer)
            if not torch.isfinite(loss):
                finite = False
                if not parallel:
                    break
            backward(loss * len(samples) / len(minibatch))
        for key, value in micro_stats.items():
            stats.setdefault(key, []).append(value)
    return finite, stats


def ppo_epochs(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    cfg: Config,
    rng: np.random.Generator,
    guard: BadMinibatchGuard,
    accelerator: Accelerator | None = None,
    scorer: torch.nn.Module | None = None,
    *,
    value_only: bool = False,
) -> dict[str, float]:
    """``ppo.n_epochs`` passes of shuffled minibatches over ``buffer``; returns the update's mean statistics.

    ``accelerator``: the run's `accelerate.Accelerator`; its backward and gradient clipping are used.
    None: plain torch, as in the unit tests. ``scorer``: the wrapped ``ScoringModule`` of a data-parallel
    run (``rl/distributed.py``); the ranks then agree on skipping a non-finite minibatch and on stopping
    early at ``ppo.target_kl``, so they always take the same optimizer steps. ``value_only``: a value
    warm-up update (``ppo.value_warmup_updates``): the value loss alone trains the value head; the policy's
    weights get no gradient, so the optimizer leaves them exactly as they were.
    """
    from vlmppo.rl.distributed import world_of

    ppo = cfg.ppo
    backward = backward_of(accelerator, ppo.minibatch_size // ppo.micro_batch_size)
    clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    params = [param for group in optimizer.param_groups for param in group["params"]]
    stats: dict[str, list[float]] = {}
    optimizer_steps, stopped_early = 0, False
    policy.loaded.model.train()
    for _epoch in range(ppo.n_epochs):
        for minibatch in buffer.minibatches(ppo.minibatch_size, rng):
            optimizer.zero_grad(set_to_none=True)
            finite, minibatch_stats = accumulate_minibatch(
                policy, minibatch, cfg, backward, scorer, value_only
            )
            if world_of(accelerator) > 1:
                finite = agreed_mean(accelerator, float(not finite)) == 0.0
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                guard.bad("the loss")
                continue
            # SB3's rule: once the policy has moved too far from the rollout's, stop this update's epochs
            # without taking the step (approx_kl was measured at the current parameters, before it).
            kl = float(np.mean(minibatch_stats.get("approx_kl", [0.0])))  # (a warm-up update has none)
            if world_of(accelerator) > 1:
                kl = agreed_mean(accelerator, kl)
            if ppo.target_kl is not None and kl > 1.5 * ppo.target_kl:
                optimizer.zero_grad(set_to_none=True)
                stopped_early = True
                break
            grad_norm = float(clip(params, ppo.max_grad_norm))
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                guard.bad("the gradient norm")
                continue
            optimizer.step()
            optimizer_steps += 1
            guard.good()
            minibatch_stats["grad_norm"] = [grad_norm]
            for key, values in minibatch_stats.items():
                stats.setdefault(key, []).append(float(np.mean(values)))
        if stopped_early:
            break
    out = {f"train/{key}": float(np.mean(values)) for key, values in stats.items()}
    out["train/optimizer_steps"] = optimizer_steps
    out["train/early_stopped"] = float(stopped_early)
    out["train/bad_minibatches"] = guard.total
    if ppo.value_warmup_updates:
        out["train/value_warmup"] = float(value_only)
    return out


def backward_of(accelerator: Accelerator | None, micro_steps: int) -> Callable[[torch.Tensor], None]:
    """The backward of a micro-batch's (already weighted) loss. DeepSpeed's engine divides every loss by its
    gradient accumulation steps (set to ``micro_steps``) itself, so that is undone first; it also takes
    its optimizer step at the last micro-batch, and clips there (``ppo.max_grad_norm``)."""
    if accelerator is None:
        return torch.Tensor.backward
    if accelerator.state.deepspeed_plugin is not None:
        return lambda loss: accelerator.backward(loss * micro_steps)
    return accelerator.backward


def agreed_mean(accelerator: Accelerator, value: float) -> float:
    """The mean of ``value`` over ranks (an all-reduce), which every rank then decides by."""
    tensor = torch.tensor([value], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="mean").item())
