"""Phase 3 of a PPO update: epochs of shuffled minibatches, micro-batches with gradient accumulation.

Loss per minibatch = clipped policy loss + vf_coef · clipped value loss − ent_coef · entropy of the action
tokens + kl_coef · KL(π ‖ π_ref) over the answer tokens, π_ref being the policy PPO started from (its
log-probs come with the rollout: ``ActorCritic.reference_logprobs``). A minibatch whose loss or gradient is
NaN/inf is skipped (no optimizer step) and counted; ``ppo.max_bad_minibatches`` in a row abort the run before
anything non-finite can be checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vlmppo.errors import VlmppoError
from vlmppo.rl.logprob import mixed_action_logprob
from vlmppo.rl.losses import entropy_from_logits, kl_to_reference, policy_loss, value_loss
from vlmppo.rl.policy import ActorCritic, Sampled
from vlmppo.rl.rollout import Step


class TrainingDiverged(VlmppoError):
    """The loss or gradients stayed NaN/inf for too many minibatches in a row."""


@dataclass
class UpdateTargets:
    """Per flattened step: old log-prob, old value, normalised advantage, return."""

    old_logp: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def collate(policy: ActorCritic, steps: list[Step]) -> tuple[Sampled, dict[str, torch.Tensor]]:
    """Rebuild the prompt batch and append the answer ids (right-padded): the input the rollout scored.

    Returns:
        The batch to score, and its [B, T] bool token masks ``thought``, ``action``, ``key``.
    """
    from vlmppo.models.generation import to_pil
    from vlmppo.models.inputs import build_inputs

    tok = policy.loaded.tokenizer
    batch = build_inputs(policy.loaded, [to_pil(s.image) for s in steps], [s.prompt for s in steps])
    batch = batch.to(policy.device)
    width = max(len(s.answer_ids) for s in steps)
    answers = torch.full((len(steps), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(steps), width), dtype=torch.bool)
    masks = {name: torch.zeros_like(mask) for name in ("thought", "action", "key")}
    for i, s in enumerate(steps):
        n = len(s.answer_ids)
        answers[i, :n] = torch.tensor(s.answer_ids)
        mask[i, :n] = True
        for name in masks:
            masks[name][i, :n] = torch.tensor(getattr(s, f"{name}_mask"), dtype=torch.bool)
    answers, mask = answers.to(policy.device), mask.to(policy.device)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    sampled = Sampled(
        sequences=torch.cat([batch["input_ids"], answers], dim=1),
        attention_mask=torch.cat([batch["attention_mask"], mask.long()], dim=1),
        prompt_len=batch["input_ids"].shape[1],
        answer_mask=mask,
        extra=extra,
        texts=[],
    )
    return sampled, {name: m.to(policy.device) for name, m in masks.items()}


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
    policy: ActorCritic, steps: list[Step], targets: UpdateTargets, idx, cfg
) -> tuple[torch.Tensor, dict]:
    """The PPO loss of one micro-batch (a mean over its samples) and its statistics."""
    p, device = cfg.ppo, policy.device
    sampled, masks = collate(policy, [steps[i] for i in idx])
    action = masks["action"]
    token_logp, new_values, logits = policy.score(sampled, temperature=p.temperature, return_logits=True)
    new_logp = mixed_action_logprob(
        token_logp, masks["thought"], action, p.thought_coef, masks["key"], p.action_key_coef
    )
    pl, st = policy_loss(
        new_logp, targets.old_logp[idx].to(device), targets.advantages[idx].to(device), p.clip_range
    )
    vl = value_loss(
        new_values, targets.old_values[idx].to(device), targets.returns[idx].to(device), p.clip_range_vf
    )
    # Entropy of the action tokens only: gather those rows first (not a [B, T, V] pass); without an
    # entropy bonus it is a diagnostic and carries no gradient.
    action_logits = (logits if p.ent_coef else logits.detach())[action]
    entropy = entropy_from_logits(
        action_logits[None], torch.ones(action_logits.shape[:1], dtype=torch.bool, device=logits.device)[None]
    )
    loss = pl + p.vf_coef * vl - p.ent_coef * entropy
    stats = {
        "policy_loss": pl.item(),
        "value_loss": vl.item(),
        "entropy": entropy.item(),
        "approx_kl": st["approx_kl"].item(),
        "clip_frac": st["clip_frac"].item(),
    }
    if p.kl_coef:  # the reference's log-probs were computed once, at rollout time
        ref_logp = torch.zeros_like(token_logp)
        for row, i in enumerate(idx):
            ref_logp[row, : len(steps[i].ref_logp)] = torch.tensor(steps[i].ref_logp)
        kl = kl_to_reference(token_logp, ref_logp, sampled.answer_mask)
        loss = loss + p.kl_coef * kl
        stats["kl_ref"] = kl.item()
    return loss, stats


def ppo_epochs(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    steps: list[Step],
    targets: UpdateTargets,
    cfg,
    rng: np.random.Generator,
    guard: BadMinibatchGuard,
    accelerator=None,
) -> dict:
    """``ppo.n_epochs`` passes of shuffled minibatches; returns mean statistics of this update.

    ``accelerator``: the run's `accelerate.Accelerator`; its backward and gradient clipping are used
    (what a launched multi-process run needs). None: plain torch, as in the unit tests.
    """
    p = cfg.ppo
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    params = [q for group in optimizer.param_groups for q in group["params"]]
    stats: dict[str, list[float]] = {}
    optimizer_steps, stopped_early = 0, False
    policy.loaded.model.train()
    for _epoch in range(p.n_epochs):
        order = rng.permutation(len(steps))
        for start in range(0, len(steps) - p.minibatch_size + 1, p.minibatch_size):
            idx = order[start : start + p.minibatch_size]
            optimizer.zero_grad(set_to_none=True)
            minibatch: dict[str, list[float]] = {}
            finite = True
            for m in range(0, len(idx), p.micro_batch_size):
                micro = idx[m : m + p.micro_batch_size]
                loss, st = micro_loss(policy, steps, targets, micro, cfg)
                if not torch.isfinite(loss):
                    finite = False
                    break
                backward(loss * len(micro) / len(idx))
                for k, v in st.items():
                    minibatch.setdefault(k, []).append(v)
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                guard.bad("the loss")
                continue
            # SB3's rule: once the policy has moved too far from the rollout's, stop this update's epochs
            # without taking the step (approx_kl was measured at the current parameters, before it).
            if p.target_kl is not None and np.mean(minibatch["approx_kl"]) > 1.5 * p.target_kl:
                optimizer.zero_grad(set_to_none=True)
                stopped_early = True
                break
            grad_norm = float(clip(params, p.max_grad_norm))
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                guard.bad("the gradient norm")
                continue
            optimizer.step()
            optimizer_steps += 1
            guard.good()
            minibatch["grad_norm"] = [grad_norm]
            for k, v in minibatch.items():
                stats.setdefault(k, []).append(float(np.mean(v)))
        if stopped_early:
            break
    out = {f"train/{k}": float(np.mean(v)) for k, v in stats.items()}
    out["train/optimizer_steps"] = optimizer_steps
    out["train/early_stopped"] = float(stopped_early)
    out["train/bad_minibatches"] = guard.total
    return out
