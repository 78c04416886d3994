"""Multi-turn prompts (``env.history``) through every sampling and scoring path, per family: the static
decoder with shared prompt embeddings (several frames per row), transformers' generate, and the plain
scoring pass all agree, and the value is read at the last prompt token."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vlmppo.models.generation import static_decoder_for
from vlmppo.models.inputs import Turn, build_inputs, to_pil
from vlmppo.rl.policy import ActorCritic, ValueHead, hidden_size


def _step(seed: int = 0):
    """Three rows with 2, 0 and 1 earlier turns (frames of different sizes), prompts of different lengths."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8) for s in (64, 96, 64, 80, 64, 96)]
    histories = [
        (Turn(frames[3], '{"thoughts": "far", "action": "+"}'), Turn(frames[4], "left")),
        (),
        (Turn(frames[5], "no idea"),),
    ]
    prompts = ["Which way?", "A longer prompt: which way should the agent go now?", "Go."]
    return frames[:3], prompts, histories


@pytest.mark.parametrize("decoder", ["static", "generate"])
def test_answers_sampled_after_earlier_turns_score_as_sampled(frozen_models, family, decoder):
    loaded = frozen_models[family]
    torch.manual_seed(0)
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)), decoder=decoder)
    images, prompts, histories = _step()
    torch.manual_seed(1)
    sampled = policy.sample(images, prompts, temperature=0.7, max_new_tokens=12, histories=histories)
    assert (sampled.prompt is not None) == (decoder == "static")
    with torch.no_grad():
        logp, values = policy.score(sampled, temperature=0.7)
        plain_logp, plain_values = policy.score(dataclasses.replace(sampled, prompt=None), temperature=0.7)
    assert sampled.answer_mask.sum() >= 3
    torch.testing.assert_close(logp, plain_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, plain_values, atol=1e-5, rtol=0)
    if decoder == "static":  # the log-prob each token was drawn with is the one scoring recomputes
        drawn = static_decoder_for(loaded.model).last_logp.masked_fill(~sampled.answer_mask, 0.0)
        torch.testing.assert_close(logp, drawn, atol=1e-4, rtol=0)
    # V(s) of the prompt alone (the bootstrap path) is the value read while scoring: the last prompt token.
    batch = build_inputs(loaded, [to_pil(i) for i in images], prompts, histories=histories)
    torch.testing.assert_close(policy.prompt_values(batch), values, atol=1e-5, rtol=0)


def test_earlier_turns_change_the_answer_distribution(frozen_models, family):
    # The frames and answers of earlier turns reach the model (not just the template around them).
    loaded = frozen_models[family]
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)))
    images, prompts, histories = _step()
    sampled = policy.sample(
        images[:1], prompts[:1], temperature=0.0, max_new_tokens=6, histories=histories[:1]
    )
    other = [tuple(Turn(np.zeros_like(np.asarray(t.frame)), t.answer) for t in histories[0])]
    resampled = dataclasses.replace(sampled, prompt=None)
    with torch.no_grad():
        first, _ = policy.score(resampled, temperature=1.0)
        batch = build_inputs(loaded, [to_pil(images[0])], prompts[:1], histories=other)
        prompt_len = batch["input_ids"].shape[1]
        answers = sampled.sequences[:, sampled.prompt_len :]
        changed = dataclasses.replace(
            resampled,
            sequences=torch.cat([batch["input_ids"], answers], 1),
            attention_mask=torch.cat([batch["attention_mask"], sampled.answer_mask.long()], 1),
            prompt_len=prompt_len,
            extra={k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")},
        )
        second, _ = policy.score(changed, temperature=1.0)
    assert not torch.allclose(first, second, atol=1e-4)
