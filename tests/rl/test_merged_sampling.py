"""Sampling from a merged copy of the LoRA model (ppo.merged_sampling): same policy, tracked after updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.rl.sampling import generate_with_logprobs

from vlmppo.config import load_config
from vlmppo.models.generation import to_pil
from vlmppo.models.inputs import build_inputs
from vlmppo.rl import train_ppo
from vlmppo.rl.startup import build_policy


def nudge_lora(model, seed):
    """Random LoRA weights (B starts at zero, so a fresh adapter would make the test trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture()
def policy(tmp_path):
    cfg = load_config(
        "probe-color-tiny", overrides=[f"run.output_dir={tmp_path}", "ppo.merged_sampling=true"]
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    assert policy.sampler is not None
    return policy


def frames_and_prompts():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(3)]
    return images, ["Which way?", "Pick left or right, please.", "Go."]


def test_refresh_makes_the_copy_compute_what_the_adapter_computes(policy):
    nudge_lora(policy.loaded.model, 1)
    policy.weights_changed()
    images, prompts = frames_and_prompts()
    batch = build_inputs(policy.loaded, [to_pil(i) for i in images], prompts)
    with torch.no_grad():
        stale = policy.sampler.model(**batch).logits
        policy.sampler.refresh(policy.loaded.model)
        merged = policy.sampler.model(**batch).logits
        adapted = policy.loaded.model(**batch).logits
    assert not torch.allclose(stale, adapted, atol=1e-3)  # the nudge matters
    torch.testing.assert_close(merged, adapted, atol=2e-5, rtol=0)
    # the training model was not touched: its adapter is still separate and trainable
    assert any(p.requires_grad for n, p in policy.loaded.model.named_parameters() if "lora_" in n)
    assert not any(p.requires_grad for p in policy.sampler.model.parameters())


def test_sampled_answers_score_like_the_distribution_they_were_sampled_from(policy):
    nudge_lora(policy.loaded.model, 2)
    policy.weights_changed()
    images, prompts = frames_and_prompts()
    torch.manual_seed(3)
    sampled = policy.sample(images, prompts, temperature=0.7, max_new_tokens=10)
    assert not policy.sampler.stale  # sample() refreshed the copy first
    torch.manual_seed(3)
    sequences, gen_logp = generate_with_logprobs(
        policy.sampler.model, policy, images, prompts, temperature=0.7, max_new_tokens=10, sampled=sampled
    )
    assert torch.equal(sequences, sampled.sequences)
    with torch.no_grad():
        token_logp, _ = policy.score(sampled, temperature=0.7)  # the training (unmerged) model
    torch.testing.assert_close(token_logp, gen_logp, atol=1e-4, rtol=0)


def test_ppo_with_merged_sampling_runs_and_the_copy_follows_each_update(tmp_path):
    cfg = load_config(
        "probe-color-tiny",
        overrides=[
            f"run.output_dir={tmp_path}",
            "ppo.merged_sampling=true",
            "env.n_envs=2",
            "ppo.n_steps=4",
            "ppo.minibatch_size=4",
            "ppo.micro_batch_size=2",
            "ppo.n_epochs=1",
            "ppo.max_new_tokens=6",
            "ppo.total_env_steps=16",
        ],
    )
    result = train_ppo(cfg)
    assert result.updates == 2 and result.last_metrics["train/optimizer_steps"] == 2
