"""Update throughput: the PPO update's teacher-forced forward + backward over micro-batches (LoRA).

Runs what an update does per micro-batch (``collate`` rebuilds the prompts and appends the sampled
answer ids, ``policy.score`` re-scores them, clipped policy + value loss, backward) and an optimizer step
per minibatch, on steps recorded by the rollout benchmark. Advantages and returns are made up (seeded):
they change the loss value, not the work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmppo.benchmark.timing import now, peak_memory_gib, reset_peak_memory


@dataclass
class UpdateRow:
    """One update measurement (timed passes only).

    Attributes:
        micro_batch_size: Samples per forward/backward.
        minibatch_size: Samples per optimizer step.
        samples: Samples processed (passes * steps available).
        tokens: Real (unpadded) prompt + answer tokens processed.
        padded_tokens: Tokens including padding (what the GPU computed on).
        seconds: Wall-clock seconds (collate, forward, backward, optimizer steps).
        collate_s: Of which rebuilding inputs on the host (processor + padding).
        peak_gib: Peak GPU memory allocated (weights, activations, gradients, optimizer state).
    """

    micro_batch_size: int
    minibatch_size: int
    samples: int
    tokens: int
    padded_tokens: int
    seconds: float
    collate_s: float
    peak_gib: float | None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def recorded_buffer(cfg, steps: list, seed: int):
    """The recorded ``StepBatch`` es as a rollout buffer with made-up (seeded) advantages, returns = values +
    advantages, and no rewards (the update never reads them)."""
    from vlmppo.rl.buffer import RolloutBuffer

    buffer = RolloutBuffer(len(steps), len(steps[0]), cfg.ppo.max_new_tokens)
    for step in steps:
        nothing = torch.zeros(len(step))
        buffer.add(step, nothing, nothing.bool(), nothing.bool(), nothing)
    buffer.advantages = torch.randn(
        buffer.n_steps, buffer.n_envs, generator=torch.Generator().manual_seed(seed)
    )
    buffer.returns = buffer.values + buffer.advantages
    return buffer


def _micro_step(policy, buffer, indices, cfg, weight: float) -> tuple[int, int, float]:
    """Forward + backward of one micro-batch; returns (real tokens, padded tokens, collate seconds)."""
    from vlmppo.rl.logprob import mixed_action_logprob
    from vlmppo.rl.losses import policy_loss, value_loss
    from vlmppo.rl.update import collate

    p, device = cfg.ppo, policy.device
    start = now(device)
    samples = buffer.samples(indices)
    sampled, masks = collate(policy, samples)
    collate_s = now(device) - start
    token_logp, values = policy.score(sampled, temperature=p.temperature)
    new_logp = mixed_action_logprob(
        token_logp, masks["thought"], masks["action"], p.thought_coef, masks["key"], p.action_key_coef
    )
    surrogate, _ = policy_loss(
        new_logp, samples.old_logp.to(device), samples.advantages.to(device), p.clip_range
    )
    critic = value_loss(values, samples.old_values.to(device), samples.returns.to(device), p.clip_range_vf)
    ((surrogate + p.vf_coef * critic) * weight).backward()
    return int(sampled.attention_mask.sum()), sampled.attention_mask.numel(), collate_s


def measure_update(policy, cfg, steps: list, *, repeats: int) -> UpdateRow:
    """Time `repeats` passes over `steps` (the rollout benchmark's ``StepBatch`` es) in minibatches of
    micro-batches, after one warm-up minibatch.

    Minibatches are ``min(ppo.minibatch_size, recorded steps)`` samples (the rollout benchmark records fewer
    samples than a real rollout), micro-batches ``ppo.micro_batch_size``, as in the PPO loop.
    """
    p, device = cfg.ppo, policy.device
    model = policy.loaded.model
    params = [q for q in model.parameters() if q.requires_grad]
    params += (
        list(policy.value_head.parameters()) if policy.value_head is not None else []
    )  # none: grpo/gigpo
    optimizer = torch.optim.AdamW(params, lr=p.lr, eps=p.adam_eps, weight_decay=p.weight_decay)
    buffer = recorded_buffer(cfg, steps, cfg.run.seed)
    micro = min(p.micro_batch_size, buffer.size)
    minibatch = max(micro, min(p.minibatch_size, buffer.size) // micro * micro)
    gen = torch.Generator()

    def one_pass(order) -> tuple[int, int, int, float]:
        samples = tokens = padded = 0
        collate_s = 0.0
        for start in range(0, len(order) - minibatch + 1, minibatch):
            idx = order[start : start + minibatch]
            optimizer.zero_grad(set_to_none=True)
            for m in range(0, len(idx), micro):
                t, pt, c = _micro_step(policy, buffer, idx[m : m + micro], cfg, micro / len(idx))
                samples, tokens, padded, collate_s = samples + micro, tokens + t, padded + pt, collate_s + c
            torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
            optimizer.step()
        return samples, tokens, padded, collate_s

    model.train()
    one_pass(list(range(minibatch)))  # warm-up: kernels, allocator, and the optimizer state exists
    reset_peak_memory(device)
    start = now(device)
    totals = [0, 0, 0, 0.0]
    for r in range(repeats):
        order = torch.randperm(buffer.size, generator=gen.manual_seed(cfg.run.seed + r)).tolist()
        totals = [a + b for a, b in zip(totals, one_pass(order), strict=True)]
    seconds = now(device) - start
    model.eval()
    optimizer.zero_grad(set_to_none=True)
    return UpdateRow(
        micro_batch_size=micro,
        minibatch_size=minibatch,
        samples=totals[0],
        tokens=totals[1],
        padded_tokens=totals[2],
        seconds=seconds,
        collate_s=totals[3],
        peak_gib=peak_memory_gib(device),
    )
