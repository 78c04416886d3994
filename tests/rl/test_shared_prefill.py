"""One prompt forward per rollout step (``ActorCritic.shared_prefill``, off by default: benchmarks only): the
static decoder samples from it and the scoring pass runs only the answer tokens over its cache, with the same
log-probs and values as scoring prompt + answer in one forward (in fp32; not under bf16 on a GPU, hence off),
and the sampled distribution still the one scoring recomputes."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
from tests.helpers import bf16_autocast_lora_policy

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.models.generation import static_decoder_for
from vlmppo.registry import FAMILIES
from vlmppo.rl.policy import ActorCritic, ValueHead, hidden_size


@pytest.fixture(scope="module", params=FAMILIES)
def policy(request):
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family=request.param, path=f"tiny:{request.param}"), for_training=True)
    with torch.no_grad():  # a trained adapter (a fresh one's B is zero: disabled or not, the same model)
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.2 * torch.randn_like(p))
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)), decoder="static")
    policy.shared_prefill = True
    loaded.model.eval()
    return policy


def test_by_default_the_scoring_pass_runs_prompt_and_answer_as_the_update_does(policy):
    default = ActorCritic(policy.loaded, policy.value_head, decoder="static")
    sampled = _sample(default, n=2)
    # the embeddings are shared, not the forward
    assert sampled.prompt is not None and sampled.prefill is None


def _sample(policy, n: int = 4, seed: int = 0, max_new: int = 12):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8) for s in rng.choice([64, 80], n)]
    prompts = [("word " * int(k)).strip() + " which way?" for k in rng.integers(0, 9, size=n)]
    torch.manual_seed(seed)
    return policy.sample(images, prompts, temperature=0.8, max_new_tokens=max_new)


def test_scoring_over_the_prefills_cache_equals_scoring_prompt_and_answer_together(policy):
    sampled = _sample(policy)
    assert sampled.prefill is not None
    kept = [layer.keys for layer in sampled.prefill.cache.layers]
    with torch.no_grad():
        logp, values = policy.score(sampled, temperature=0.8)
        logp_full, values_full = policy.score(dataclasses.replace(sampled, prefill=None), temperature=0.8)
        again, _ = policy.score(sampled, temperature=0.8)  # the cache is left as the prefill made it
    mask = sampled.answer_mask
    assert mask.sum() >= 4 * 6
    torch.testing.assert_close(logp, logp_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, values_full, atol=1e-5, rtol=0)
    assert torch.equal(again, logp)
    assert all(layer.keys is k for layer, k in zip(sampled.prefill.cache.layers, kept, strict=True))
    # sampling = scoring: the decoder drew each token with the log-prob scoring recomputes
    decoder = static_decoder_for(policy.loaded.model)
    torch.testing.assert_close(logp, decoder.last_logp.masked_fill(~mask, 0.0), atol=1e-4, rtol=0)


def test_a_prefill_made_with_the_adapter_active_is_not_used_once_it_is_disabled(policy):
    sampled = _sample(policy, n=3, seed=1, max_new=6)
    model = policy.loaded.model
    with torch.no_grad():
        with model.disable_adapter():
            base = policy.score(sampled, temperature=0.8)[0]
            base_full = policy.score(dataclasses.replace(sampled, prefill=None), temperature=0.8)[0]
        trained = policy.score(sampled, temperature=0.8)[0]
    assert torch.equal(base, base_full)  # the prefill was skipped: the full forward of the base model
    assert not torch.allclose(base, trained, atol=1e-3)  # and the adapter matters


def test_the_kl_reference_runs_its_own_prefill_and_equals_the_full_forward(policy):
    sampled = _sample(policy, n=3, seed=2, max_new=6)
    model = policy.loaded.model
    with torch.no_grad():
        ref = policy.reference_logprobs(sampled, temperature=0.8)
        with model.disable_adapter():
            full = policy.score(dataclasses.replace(sampled, prefill=None), temperature=0.8)[0]
    torch.testing.assert_close(ref, full, atol=1e-5, rtol=0)


def test_under_autocast_skipping_the_adapters_input_casts_changes_no_bit():
    policy = bf16_autocast_lora_policy(decoder="static")  # the GPU setting, on the CPU
    policy.shared_prefill = True
    policy.loaded.model.eval()
    sampled = _sample(policy, n=3, seed=3, max_new=6)
    calls = []
    original = type(policy).adapter_casts_skipped

    def counted(self):
        context = original(self)
        calls.append(isinstance(context, contextlib.nullcontext))
        return context

    with torch.no_grad():
        logp, values = policy.score(sampled, temperature=0.8)
        type(policy).adapter_casts_skipped = lambda self: contextlib.nullcontext()
        try:
            with_casts = policy.score(
                dataclasses.replace(sampled, prefill=policy.prefill(sampled.prompt)), temperature=0.8
            )
            type(policy).adapter_casts_skipped = counted
            without = policy.score(
                dataclasses.replace(sampled, prefill=policy.prefill(sampled.prompt)), temperature=0.8
            )
        finally:
            type(policy).adapter_casts_skipped = original
    assert calls == [False, False]  # the prefill and the scoring pass, both skipping the casts
    assert torch.equal(without[0], with_casts[0]) and torch.equal(without[1], with_casts[1])
    assert torch.equal(logp, without[0])
