"""The update's pass under autocast skips peft's cast of each adapted layer's input to the adapter's fp32 (and
autocast's cast straight back): the loss and every gradient keep their bits, and the copies are gone."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from tests.helpers import bf16_autocast_lora_policy

from vlmppo.rl.startup import disable_dropout


def _update_pass(policy, sampled):
    """One teacher-forced pass with gradients, as the update runs it; its loss, the gradients, the copies."""
    policy.loaded.model.zero_grad(set_to_none=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        logp, values = policy.score(sampled, temperature=0.8)
        loss = -(logp.sum()) + values.square().sum()
        loss.backward()
    grads = {n: p.grad.clone() for n, p in policy.loaded.model.named_parameters() if p.grad is not None}
    copies = sum(e.count for e in prof.key_averages() if e.key == "aten::copy_")
    return loss.detach(), grads, copies


def test_the_update_pass_without_the_adapters_input_casts_has_the_same_loss_and_gradients():
    policy = bf16_autocast_lora_policy(decoder="generate")  # the GPU setting, on the CPU
    loaded = policy.loaded
    disable_dropout(loaded.model)  # as in PPO
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(3)]
    torch.manual_seed(1)
    with torch.no_grad():
        sampled = policy.sample(
            images, ["which way?", "go", "left or right?"], temperature=0.8, max_new_tokens=6
        )
    loaded.model.train()

    skipped = _update_pass(policy, sampled)
    original = type(policy).adapter_casts_skipped
    type(policy).adapter_casts_skipped = lambda self: contextlib.nullcontext()
    try:
        cast = _update_pass(policy, sampled)
    finally:
        type(policy).adapter_casts_skipped = original

    assert torch.equal(skipped[0], cast[0])
    assert skipped[1].keys() == cast[1].keys() and any("lora_A" in n for n in skipped[1])
    assert all(torch.equal(skipped[1][n], cast[1][n]) for n in cast[1])
    assert skipped[2] < cast[2]  # the casts were there to skip, and were skipped
