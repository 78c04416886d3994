"""The update's forward starts from the prompts' embeddings built as the rollout builds them (``collate`` +
``ActorCritic.score``) when nothing it trains reaches them: the same log-probs, values and gradients as the
model's own forward over the ids, and frames already embedded are not sent through the vision tower again.
Where something does train them (full fine-tuning, a trained projector), the update runs the plain forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlmppo.config.schema import LoraConfig, ModelConfig
from vlmppo.models import load_model
from vlmppo.models.prompt_embeds import backbone_of
from vlmppo.models.vision_cache import cache_of, clear_feature_cache
from vlmppo.registry import FAMILIES
from vlmppo.rl.buffer import Samples
from vlmppo.rl.policy import ActorCritic, ValueHead, hidden_size
from vlmppo.rl.update import collate


def _policy(family: str, **model_fields) -> ActorCritic:
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family=family, path=f"tiny:{family}", **model_fields), for_training=True)
    with torch.no_grad():  # a trained adapter: a fresh one's B is zero and would hide a wrong gradient path
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.2 * torch.randn_like(p))
    loaded.model.eval()
    return ActorCritic(loaded, ValueHead(hidden_size(loaded.model)))


def _samples(policy: ActorCritic, n: int = 3) -> Samples:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(n)]
    images[2] = images[0]  # a frame seen twice in one batch
    prompts = [("word " * int(k)).strip() + " which way?" for k in rng.integers(1, 6, size=n)]
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = policy.sample(images, prompts, temperature=1.0, max_new_tokens=6)
    mask = sampled.answer_mask.clone()
    mask[:, :3] = True  # at least a few answer tokens per row, whatever was sampled
    answers = sampled.sequences[:, sampled.prompt_len :].masked_fill(~mask, 0)
    zeros = torch.zeros(n)
    return Samples(images, prompts, answers, mask, mask, mask, mask, None, zeros, zeros, zeros, zeros)


def _loss_and_grads(policy: ActorCritic, sampled):
    model = policy.loaded.model
    model.zero_grad(set_to_none=True)
    policy.value_head.zero_grad(set_to_none=True)
    logp, values, _ = policy.score(sampled, temperature=1.0, return_logits=True)
    (logp.sum() + values.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), values.detach(), grads


@pytest.mark.parametrize("family", FAMILIES)
def test_under_lora_the_update_starts_from_the_prompt_embeddings_with_the_plain_forwards_numbers(family):
    policy = _policy(family)
    assert policy.prompt_embeddings_constant()
    clear_feature_cache(policy.loaded.model)
    sampled, _ = collate(policy, _samples(policy))
    assert sampled.prompt is not None
    calls = []
    backbone = backbone_of(policy.loaded.model)
    for name, child in backbone.named_children():
        if name != "language_model":  # the vision tower and projector
            child.register_forward_hook(lambda *_: calls.append(1))
    logp, values, grads = _loss_and_grads(policy, sampled)
    assert not calls  # the forward started from the embeddings
    plain_logp, plain_values, plain_grads = _loss_and_grads(policy, dataclasses.replace(sampled, prompt=None))
    assert calls
    assert sampled.answer_mask.sum() >= 9
    torch.testing.assert_close(logp, plain_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, plain_values, atol=1e-5, rtol=0)
    assert grads.keys() == plain_grads.keys() and any("lora_" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(g.abs().max() > 1e-4 for g in grads.values())  # a gradient that could have differed


def test_frames_already_embedded_skip_the_vision_tower_in_the_update():
    policy = _policy("qwen2-vl")
    cache = cache_of(backbone_of(policy.loaded.model))
    clear_feature_cache(policy.loaded.model)
    samples = _samples(policy)
    collate(policy, samples)
    first = (cache.hits, cache.misses)
    collate(policy, samples)  # the next epoch's micro-batch of the same steps
    assert first[1] == 2  # three frames, two distinct, each through the tower once
    assert (cache.hits, cache.misses) == (first[0] + 3, first[1])


@pytest.mark.parametrize(
    "fields",
    [{"lora": None, "dtype": "float32"}, {"lora": LoraConfig(train_projector=True)}],
    ids=["full", "projector"],
)
def test_when_the_update_trains_what_makes_the_embeddings_it_runs_the_plain_forward(fields):
    policy = _policy("qwen2-vl", **fields)
    assert not policy.prompt_embeddings_constant()
    sampled, _ = collate(policy, _samples(policy))
    assert sampled.prompt is None
    _, _, grads = _loss_and_grads(policy, sampled)
    trained = [name for name in grads if "visual" in name and grads[name].abs().max() > 0]
    assert trained  # the vision side (tower or projector) gets its gradient
