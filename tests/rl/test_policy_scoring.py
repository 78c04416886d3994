"""The teacher-forced log-prob of a sampled answer equals the one computed while generating.

This catches masking, padding and off-by-one offset bugs between rollout and update.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tests.rl.sampling import generate_with_logprobs

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.rl.policy import ActorCritic, ValueHead, answer_mask_from_ids, hidden_size


def test_answer_mask_keeps_tokens_through_the_first_eos_only():
    ids = torch.tensor([[5, 6, 2, 9, 2], [2, 7, 7, 7, 7], [5, 5, 5, 5, 5]])
    mask = answer_mask_from_ids(ids, eos_id=2)
    assert mask.tolist() == [[True, True, True, False, False], [True, False, False, False, False], [True] * 5]


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "llava", "llava-next"])
def test_teacher_forced_logprobs_match_generation_logits(family):
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family=family, path=f"tiny:{family}", lora=None), for_training=False)
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8) for s in (64, 96, 64)]
    prompts = ["Pick left or right.", "A much longer prompt: which way should the agent turn now?", "Go."]
    temperature = 0.7
    torch.manual_seed(1)
    sampled = policy.sample(images, prompts, temperature=temperature, max_new_tokens=12)
    # The same sampling again, now asking generate for the scores it sampled from at every step
    # (after temperature and the suppression of image/video placeholder tokens).
    torch.manual_seed(1)
    sequences, gen_logp = generate_with_logprobs(
        loaded.model, policy, images, prompts, temperature=temperature, max_new_tokens=12, sampled=sampled
    )
    assert torch.equal(sequences, sampled.sequences)
    answers = sequences[:, sampled.prompt_len :]
    with torch.no_grad():
        token_logp, values = policy.score(sampled, temperature=temperature)
    assert token_logp.shape == gen_logp.shape and values.shape == (3,)
    assert sampled.answer_mask.sum() > 3
    assert (
        policy.suppressed
        and not torch.isin(answers[sampled.answer_mask], torch.tensor(policy.suppressed)).any()
    )
    torch.testing.assert_close(token_logp, gen_logp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-next"])
def test_prompt_only_values_equal_the_values_scored_with_the_answer(family):
    # The rollout's bootstrap values (prompt only) and its step values (prompt + answer) must be one V(s).
    from vlmppo.models.inputs import build_inputs

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family=family, path=f"tiny:{family}", lora=None), for_training=False)
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8) for s in (64, 96)]
    prompts = ["Pick left or right.", "A longer prompt, so the first row is left-padded."]
    sampled = policy.sample(images, prompts, temperature=0.7, max_new_tokens=8)
    with torch.no_grad():
        _, scored = policy.score(sampled, temperature=0.7)
    batch = build_inputs(loaded, [Image.fromarray(im) for im in images], prompts)
    assert torch.allclose(policy.prompt_values(batch), scored, atol=1e-5)
