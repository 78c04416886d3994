"""The rollout's host bookkeeping (``mark_answers``: parse, token masks, old log-prob) gives exactly what the
old row-by-row loop gave (kept as ``bench.rollout_host.marks_before``, the bench's "before"), for random-weight
byte soup and for real answers, with the paper's parser and ours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench.rollout_host import marks_before

from vlmppo.config.schema import ModelConfig, PpoConfig
from vlmppo.envs import get_adapter
from vlmppo.models import load_model
from vlmppo.rl.rollout import mark_answers


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
    want = marks_before(tokenizer, adapter, [np.random.default_rng([7, r]) for r in range(len(texts))],
                           texts, answers, mask, logp, ppo)  # fmt: skip
    for name in ("thought", "action", "key"):
        assert torch.equal(got[0][name], want[0][name]), name
    assert torch.equal(got[1], want[1])  # bit for bit
    assert got[2] == want[2] and torch.equal(got[3], want[3]) and torch.equal(got[4], want[4])
    assert want[0]["action"].any() and want[3].any() and not want[3].all()  # both kinds of answer were there
    assert style != "rl4vlm" or want[0]["key"].any()  # the paper's "action": key tokens were marked
