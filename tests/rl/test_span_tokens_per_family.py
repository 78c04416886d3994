"""Span → token mapping with each tiny family's own tokenizer, exactly as the rollout does it.

The rollout decodes the sampled ids, the env's parser finds the action value's character span in that
text, ``answer_offsets`` maps the span to token positions by decoding growing prefixes, and
``action_token_mask`` splits thought and action tokens. These tests encode answers the way a model would
emit them (the ids of the answer text followed by the end-of-turn id) and check the split decodes back to
exactly the text before the action part and the text from it on — for Qwen2-VL, Qwen2.5-VL, LLaVA and
LLaVA-NeXT tokenizers (SentencePiece-like prefix handling and byte-level BPE alike).
"""

from __future__ import annotations

import numpy as np
import pytest

from vlmppo.envs import get_adapter
from vlmppo.models import load_model
from vlmppo.models.families import FAMILIES
from vlmppo.rl.logprob import action_token_mask
from vlmppo.rl.rollout import answer_offsets

ANSWERS = {
    # (answer text, the action value the parser must find)
    "thoughts then action at the end": (
        '{"thoughts": "The goal is on my left, go left.", "action": "left"}',
        "left",
    ),
    "action only": ('{"action": "right"}', "right"),
    "action in the middle": ('{"action": "left", "thoughts": "The frame is red."}', "left"),
    "unparseable": ("I would go somewhere else entirely.", None),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tokenizer(request):
    from vlmppo.config.schema import ModelConfig

    loaded = load_model(
        ModelConfig(family=request.param, path=f"tiny:{request.param}", lora=None), for_training=False
    )
    return loaded.tokenizer


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_thought_and_action_tokens_decode_to_the_text_before_and_from_the_action(tokenizer, case):
    text, value = ANSWERS[case]
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == text  # the parser sees exactly this text
    parsed = get_adapter("probe/Color-v0").parse(decoded, np.random.default_rng(0))
    thought, action = action_token_mask(answer_offsets(tokenizer, ids), parsed.span, len(ids))
    assert not (thought & action).any() and (thought | action).all()
    thought_ids = [i for i, t in zip(ids, thought.tolist(), strict=True) if t]
    action_ids = [i for i, a in zip(ids, action.tolist(), strict=True) if a]
    if value is None:
        assert parsed.invalid and parsed.span is None
        assert thought.all() and thought_ids == ids  # the whole answer, end-of-turn included, is "thought"
        return
    start, end = parsed.span
    assert decoded[start:end] == value
    assert action_ids[-1] == tokenizer.eos_token_id  # end-of-turn belongs to the action part
    before = tokenizer.decode(thought_ids, skip_special_tokens=True)
    after = tokenizer.decode(action_ids, skip_special_tokens=True)
    assert before + after == text
    # the action part starts at the value, or at most at the quote merged into its first token
    assert text[len(before) : start] in ("", '"', ' "')
    assert value in after and after.endswith("}")


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_the_fast_offsets_split_exactly_like_prefix_decoding(tokenizer, case):
    from vlmppo.rl.rollout import offsets_by_prefix_decoding

    text, _ = ANSWERS[case]
    ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    span = get_adapter("probe/Color-v0").parse(text, np.random.default_rng(0)).span
    fast = action_token_mask(answer_offsets(tokenizer, ids), span, len(ids))
    slow = action_token_mask(offsets_by_prefix_decoding(tokenizer, ids), span, len(ids))
    assert all(a.tolist() == b.tolist() for a, b in zip(fast, slow, strict=True))


def test_ids_that_do_not_re_tokenize_to_themselves_fall_back_to_prefix_decoding(tokenizer):
    from vlmppo.rl.rollout import offsets_by_prefix_decoding

    text = '{"action": "left"}'
    ids = tokenizer.encode(text, add_special_tokens=False)
    # spell the text one character per token: decodes to the same text, re-tokenizes differently
    chars = [i for c in text for i in tokenizer.encode(c, add_special_tokens=False)]
    assert tokenizer.decode(chars) == text and chars != ids
    assert answer_offsets(tokenizer, chars) == offsets_by_prefix_decoding(tokenizer, chars)


def reference_offsets(tokenizer, ids: list[int]) -> list[tuple[int, int]]:
    """The rollout's offsets as it computed them one row at a time, through ``tokenizer.decode``."""
    body = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
    encoded = tokenizer(
        tokenizer.decode(body, skip_special_tokens=True),
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    if encoded["input_ids"] == body:
        return [tuple(pair) for pair in encoded["offset_mapping"]]
    offsets, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=True)
        offsets.append((len(previous), len(text)) if text.startswith(previous) else (len(text), len(text)))
        previous = text
    return offsets


def test_batched_offsets_equal_row_by_row_decoding_for_random_and_real_answers(tokenizer):
    """Untrained models answer in byte soup (special tokens, split multi-byte characters, an end-of-turn
    anywhere): the batched offsets must be those of decoding each row and prefix on its own."""
    from vlmppo.rl.rollout import batch_answer_offsets

    rng = np.random.default_rng(0)
    vocab = len(tokenizer)
    rows = [rng.integers(0, vocab, size=int(n)).tolist() for n in rng.integers(0, 40, size=24)]
    rows[1] = rows[1] + [tokenizer.eos_token_id]
    rows += [
        tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        for text, _ in ANSWERS.values()
    ]
    rows.append([])
    expected = [reference_offsets(tokenizer, ids) for ids in rows]
    assert batch_answer_offsets(tokenizer, rows) == expected
    assert (
        sum(1 for ids, got in zip(rows, expected, strict=True) if got and ids) > 20
    )  # the rows are not trivial
    assert batch_answer_offsets(tokenizer, []) == []
