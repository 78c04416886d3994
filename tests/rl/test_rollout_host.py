"""The rollout's host bookkeeping (``mark_answers``: parse, token masks, old log-prob) gives exactly what the
loop gave when it decoded every answer and prefix row by row, for random-weight byte soup and for real
answers, with the paper's parser and ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.rl.test_span_tokens_per_family import reference_offsets

from vlmppo.config.schema import ModelConfig, PpoConfig
from vlmppo.envs import get_adapter
from vlmppo.models import load_model
from vlmppo.rl.logprob import action_key_start, action_token_mask, mixed_action_logprob
from vlmppo.rl.rollout import mark_answers


def reference_key_mask(offsets, key_start, thought_mask):
    """``action_key_mask`` as it was: token by token."""
    key = torch.zeros_like(thought_mask)
    if key_start is None:
        return key
    for i, (_, end) in enumerate(offsets):
        key[i] = bool(thought_mask[i]) and end > key_start
    return key


def reference_marks(tokenizer, adapter, rngs, texts, answers, answer_mask, token_logp, ppo):
    """The loop of ``rollout_step`` before ``mark_answers``: one row at a time, offsets for every row."""
    masks = {name: torch.zeros_like(answer_mask) for name in ("thought", "action", "key")}
    old_logp, actions, invalid, eos = torch.zeros(len(texts)), [], [], []
    for row, text in enumerate(texts):
        ids = answers[row][answer_mask[row]].tolist()
        parsed = adapter.parse(text, rngs[row])
        offsets = reference_offsets(tokenizer, ids)
        thought, action = action_token_mask(offsets, parsed.span, len(ids))
        key = reference_key_mask(offsets, action_key_start(text, parsed.span), thought)
        thought = thought & ~key
        old_logp[row] = mixed_action_logprob(
            token_logp[row : row + 1, : len(ids)], thought[None], action[None], ppo.thought_coef, key[None],
            ppo.action_key_coef,
        )[0]  # fmt: skip
        for name, mask in (("thought", thought), ("action", action), ("key", key)):
            masks[name][row, : len(ids)] = mask
        actions.append(parsed.index)
        invalid.append(bool(parsed.invalid))
        eos.append(bool(ids) and ids[-1] == tokenizer.eos_token_id)
    return masks, old_logp, actions, torch.tensor(invalid), torch.tensor(eos)


@pytest.fixture(scope="module", params=["qwen2-vl", "llava"])
def tokenizer(request):
    return load_model(
        ModelConfig(family=request.param, path=f"tiny:{request.param}", lora=None), for_training=False
    ).tokenizer


def answers_batch(tokenizer, adapter, rows: int = 24, length: int = 48):
    """Half byte soup (random ids, an end-of-turn in some), half well-formed answers of this prompt style."""
    rng = np.random.default_rng(1)
    eos = tokenizer.eos_token_id
    ids = [
        rng.integers(0, len(tokenizer), size=int(rng.integers(1, length))).tolist() for _ in range(rows // 2)
    ]
    ids = [row[:-1] + [eos] if k % 3 == 0 else row for k, row in enumerate(ids)]
    for k in range(rows - len(ids)):
        answer = adapter.format_answer(
            k % len(adapter.legal_actions), f"step {k}: go", {"current": k, "target": 3}
        )
        ids.append((tokenizer.encode(answer, add_special_tokens=False) + [eos])[:length])
    answers = torch.zeros(rows, length, dtype=torch.long)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for row, row_ids in enumerate(ids):
        answers[row, : len(row_ids)] = torch.tensor(row_ids)
        mask[row, : len(row_ids)] = True
    texts = tokenizer.batch_decode(
        answers.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True
    )
    logp = -torch.rand(rows, length, generator=torch.Generator().manual_seed(2), dtype=torch.float32) * 5
    return texts, answers, mask, logp


@pytest.mark.parametrize("style", ["rl4vlm", "cot"])
def test_mark_answers_equals_the_row_by_row_loop(tokenizer, style):
    adapter = get_adapter("gym_cards/NumberLine-v0", "full", style)
    ppo = PpoConfig(thought_coef=0.5, action_key_coef=0.7)
    texts, answers, mask, logp = answers_batch(tokenizer, adapter)
    got = mark_answers(tokenizer, adapter, [np.random.default_rng([7, r]) for r in range(len(texts))],
                       texts, answers, mask, logp, ppo)  # fmt: skip
    want = reference_marks(tokenizer, adapter, [np.random.default_rng([7, r]) for r in range(len(texts))],
                           texts, answers, mask, logp, ppo)  # fmt: skip
    for name in ("thought", "action", "key"):
        assert torch.equal(got[0][name], want[0][name]), name
    assert torch.equal(got[1], want[1])  # bit for bit
    assert got[2] == want[2] and torch.equal(got[3], want[3]) and torch.equal(got[4], want[4])
    assert want[0]["action"].any() and want[3].any() and not want[3].all()  # both kinds of answer were there
    assert style != "rl4vlm" or want[0]["key"].any()  # the paper's "action": key tokens were marked
