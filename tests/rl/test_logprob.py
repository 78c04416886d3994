"""Token log-probs, span→token masks (hand offsets and a real byte-level BPE), and λ-mixing."""

import math
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from vlmppo.rl.logprob import (
    action_key_mask,
    action_key_start,
    action_token_mask,
    mixed_action_logprob,
    token_logprobs,
)

END = "<|end|>"


# ---------------------------------------------------------------- token_logprobs


def test_token_logprobs_gathers_log_softmax_at_targets():
    # logits [0, ln 3] → p = [0.25, 0.75]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    out = token_logprobs(logits, torch.tensor([[1, 0]]), temperature=1.0)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.25)]]))


def test_token_logprobs_divides_by_temperature():
    # T = 2: logits [0, ln3 / 2] → p(0) = 1 / (1 + √3) → log p = −ln(1 + √3) = −1.005052
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    out = token_logprobs(logits, torch.tensor([[0]]), temperature=2.0)
    assert out.item() == pytest.approx(-1.005052, abs=1e-6)


def test_token_logprobs_upcasts_bf16_to_float32():
    logits = torch.tensor([[[0.0, math.log(3.0)]]], dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[1]]), temperature=1.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(math.log(0.75), abs=1e-2)  # bf16 rounds ln 3 to 1.1016


def test_token_logprobs_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), temperature=0.0)


# ---------------------------------------------------------------- action_token_mask, hand offsets


def as_list(mask):
    return mask.tolist()


def test_mask_splits_at_first_token_overlapping_span_and_covers_end_token():
    # text: {"action": "left"}   span of left = (12, 16); last token is an appended special (0, 0)
    offsets = [(0, 2), (2, 8), (8, 10), (11, 12), (12, 16), (16, 18), (0, 0)]
    thought, action = action_token_mask(offsets, (12, 16), answer_len=7)
    # the token ending exactly at 12 (the opening quote) is strictly before the span → thought
    assert as_list(thought) == [True, True, True, True, False, False, False]
    assert as_list(action) == [False, False, False, False, True, True, True]


def test_mask_token_straddling_span_start_is_action():
    # a token (10, 14) covers the quote and the first letters of the value → first action token
    thought, action = action_token_mask([(0, 10), (10, 14), (14, 18)], (12, 16), answer_len=3)
    assert as_list(thought) == [True, False, False]
    assert as_list(action) == [False, True, True]


def test_mask_tokens_beyond_offsets_are_action():
    # generate's EOS has no offset: answer_len 4 > 3 offsets
    thought, action = action_token_mask([(0, 4), (4, 8), (8, 9)], (4, 8), answer_len=4)
    assert as_list(thought) == [True, False, False, False]
    assert as_list(action) == [False, True, True, True]


def test_mask_with_no_span_is_all_thought():
    thought, action = action_token_mask([(0, 3), (3, 5), (0, 0)], None, answer_len=3)
    assert as_list(thought) == [True, True, True]
    assert as_list(action) == [False, False, False]


def test_mask_rejects_span_no_token_covers():
    with pytest.raises(ValueError, match="no answer token overlaps"):
        action_token_mask([(0, 3), (3, 5)], (7, 9), answer_len=2)
    with pytest.raises(ValueError, match="empty"):
        action_token_mask([(0, 3), (3, 5)], (3, 3), answer_len=2)
    with pytest.raises(ValueError, match="answer_len"):
        action_token_mask([(0, 3), (3, 5)], (0, 3), answer_len=1)


# ---------------------------------------------------------------- action_token_mask, real tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny byte-level BPE (GPT-2/Qwen style) that appends an end-of-turn special token."""
    corpus = [
        '{"thoughts": "The goal is to the left of the agent.", "action": "left"}',
        '{"action": "move forward", "thoughts": "The door is straight ahead."}',
        '{"action": "right"}',
        '{"thoughts": "I see a key, so I pick it up.", "action": "pick up"}',
    ] * 10
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(single=f"$A {END}", special_tokens=[(END, tok.token_to_id(END))]),
        ]
    )
    return tok


def action_value_span(answer):
    """What the env parser reports: the character span of the "action" string value, or None."""
    m = re.search(r'"action":\s*"([^"]*)"', answer)
    return m.span(1) if m else None


def split_answer(tok, answer):
    enc = tok.encode(answer)
    span = action_value_span(answer)
    thought, action = action_token_mask(enc.offsets, span, answer_len=len(enc.ids))
    ids = torch.tensor(enc.ids)
    thought_text = tok.decode(ids[thought].tolist(), skip_special_tokens=False)
    action_text = tok.decode(ids[action].tolist(), skip_special_tokens=False)
    assert not (thought & action).any() and (thought | action).all()
    return span, thought_text, action_text


def check_split(tok, answer, value):
    span, thought_text, action_text = split_answer(tok, answer)
    assert answer[span[0] : span[1]] == value
    # thought is exactly the text before the action part, and the action part runs to the end token
    assert answer.startswith(thought_text)
    assert action_text == answer[len(thought_text) :] + END
    # the action part starts at the value or at most at its opening quote (merged into one token)
    assert answer[len(thought_text) : span[0]] in ("", '"', ' "')
    return thought_text, action_text


def test_real_tokenizer_action_at_end_after_thoughts(tokenizer):
    # "left" also appears inside the thoughts: the span, not a token search, must decide.
    answer = '{"thoughts": "The goal is on my left.", "action": "left"}'
    thought_text, action_text = check_split(tokenizer, answer, "left")
    assert "on my left" in thought_text
    assert action_text.endswith('left"}' + END)


def test_real_tokenizer_action_without_thoughts(tokenizer):
    thought_text, action_text = check_split(tokenizer, '{"action": "right"}', "right")
    assert thought_text.startswith('{"action":')
    assert action_text.endswith('right"}' + END)


def test_real_tokenizer_action_in_middle_puts_later_thoughts_in_action_part(tokenizer):
    answer = '{"action": "left", "thoughts": "The goal is to the left."}'
    thought_text, action_text = check_split(tokenizer, answer, "left")
    assert "thoughts" not in thought_text
    assert '"thoughts": "The goal is to the left."}' in action_text


def test_real_tokenizer_multi_token_action_value(tokenizer):
    answer = '{"thoughts": "The door is straight ahead.", "action": "move forward"}'
    enc = tokenizer.encode(answer)
    span = action_value_span(answer)
    _, action = action_token_mask(enc.offsets, span, answer_len=len(enc.ids))
    # the value itself spans several tokens, and all of them are action tokens
    value_tokens = [i for i, (s, e) in enumerate(enc.offsets) if s < span[1] and e > span[0]]
    assert len(value_tokens) >= 2
    assert action[value_tokens].all()
    thought_text, action_text = check_split(tokenizer, answer, "move forward")
    assert "move forward" in action_text and "move" not in thought_text


def test_real_tokenizer_unparseable_answer_is_all_thought(tokenizer):
    answer = "I think I should go left."
    span, thought_text, action_text = split_answer(tokenizer, answer)
    assert span is None
    assert thought_text == answer + END
    assert action_text == ""


def test_real_tokenizer_generated_eos_beyond_text_offsets_is_action(tokenizer):
    # offsets of the text alone (no appended special), plus one EOS id that generate produced
    answer = '{"action": "right"}'
    enc = tokenizer.encode(answer, add_special_tokens=False)
    thought, action = action_token_mask(enc.offsets, action_value_span(answer), answer_len=len(enc.ids) + 1)
    assert action[-1] and not thought[-1]
    assert thought.sum() + action.sum() == len(enc.ids) + 1


# ---------------------------------------------------------------- the "action": key (ppo.action_key_coef)


@pytest.mark.parametrize(
    ("answer", "key"),
    [
        ('{"thoughts": "go", "action": "left"}', '"action": "'),
        ("{'thoughts': 'go', 'Action' : 'left'}", "'Action' : '"),
        ('{"thoughts": "go", action: left}', "action: "),
        ('{"thoughts": "the action: left", "action":"left"}', '"action":"'),
    ],
)
def test_action_key_start_finds_the_key_the_parser_read_before_the_value(answer, key):
    value = answer.rindex("left")
    start = action_key_start(answer, (value, value + 4))
    assert answer[start:value] == key


def test_action_key_start_is_none_without_a_parsed_action_or_a_key():
    assert action_key_start('{"action": "left"}', None) is None
    assert action_key_start("left", (0, 4)) is None


def test_key_tokens_are_the_thought_tokens_from_the_key_on(tokenizer):
    answer = '{"thoughts": "The goal is on my left.", "action": "left"}'
    enc = tokenizer.encode(answer)
    span = action_value_span(answer)
    thought, action = action_token_mask(enc.offsets, span, answer_len=len(enc.ids))
    key = action_key_mask(enc.offsets, action_key_start(answer, span), thought)
    ids = torch.tensor(enc.ids)
    key_text = tokenizer.decode(ids[key].tolist(), skip_special_tokens=False)
    before = tokenizer.decode(ids[thought & ~key].tolist(), skip_special_tokens=False)
    assert key_text.strip().startswith('"action":') and answer.startswith(before + key_text)
    assert before.endswith('left.",') and not (key & action).any() and (key <= thought).all()
    assert not action_key_mask(enc.offsets, None, thought).any()


# ---------------------------------------------------------------- mixed_action_logprob

# two answers of 5 positions: row 0 = 2 thought + 2 action + 1 pad; row 1 = 1 thought + 1 action + 3 pad.
# Padding carries −inf and NaN to prove it is never read.
NAN, INF = float("nan"), float("inf")
TOKEN_LOGP = torch.tensor([[-1.0, -2.0, -0.5, -0.25, -INF], [-3.0, -1.0, NAN, -INF, 0.0]])
THOUGHT = torch.tensor([[True, True, False, False, False], [True, False, False, False, False]])
ACTION = torch.tensor([[False, False, True, True, False], [False, True, False, False, False]])


def test_mixed_logprob_weights_thoughts_by_lambda_and_ignores_padding():
    # row 0: 0.5·(−1 − 2) + (−0.5 − 0.25) = −1.5 − 0.75 = −2.25
    # row 1: 0.5·(−3) + (−1) = −2.5
    out = mixed_action_logprob(TOKEN_LOGP, THOUGHT, ACTION, thought_coef=0.5)
    torch.testing.assert_close(out, torch.tensor([-2.25, -2.5]))


def test_mixed_logprob_lambda_zero_is_action_tokens_only():
    out = mixed_action_logprob(TOKEN_LOGP, THOUGHT, ACTION, thought_coef=0.0)
    torch.testing.assert_close(out, torch.tensor([-0.75, -1.0]))


def test_mixed_logprob_lambda_one_is_full_answer_logprob():
    # row 0: −1 − 2 − 0.5 − 0.25 = −3.75; row 1: −3 − 1 = −4
    out = mixed_action_logprob(TOKEN_LOGP, THOUGHT, ACTION, thought_coef=1.0)
    torch.testing.assert_close(out, torch.tensor([-3.75, -4.0]))


def test_mixed_logprob_gradient_is_lambda_on_thoughts_one_on_action_zero_on_padding():
    logp = TOKEN_LOGP.clone().requires_grad_()
    mixed_action_logprob(logp, THOUGHT, ACTION, thought_coef=0.5).sum().backward()
    expected = torch.tensor([[0.5, 0.5, 1.0, 1.0, 0.0], [0.5, 1.0, 0.0, 0.0, 0.0]])
    assert torch.equal(logp.grad, expected)


def test_mixed_logprob_rejects_overlapping_masks():
    with pytest.raises(ValueError, match="overlap"):
        mixed_action_logprob(
            torch.zeros(1, 2), torch.tensor([[True, True]]), torch.tensor([[False, True]]), 0.5
        )


def test_mixed_logprob_weights_the_action_key_by_its_own_coef():
    # row 0: tokens 0 thought, 1 key, 2-3 action; row 1: token 0 key, 1 action.
    thought = torch.tensor([[True, False, False, False, False], [False] * 5])
    key = torch.tensor([[False, True, False, False, False], [True, False, False, False, False]])
    # RL4VLM (key weight 1): row 0: 0.5·(−1) + (−2) + (−0.5 − 0.25) = −3.25; row 1: −3 − 1 = −4
    out = mixed_action_logprob(TOKEN_LOGP, thought, ACTION, 0.5, key, key_coef=1.0)
    torch.testing.assert_close(out, torch.tensor([-3.25, -4.0]))
    # key weighted like the thoughts, λ = 0.5: the value without a key mask (−2.25, −2.5)
    out = mixed_action_logprob(TOKEN_LOGP, thought, ACTION, 0.5, key, key_coef=0.5)
    torch.testing.assert_close(out, mixed_action_logprob(TOKEN_LOGP, thought | key, ACTION, 0.5))
    torch.testing.assert_close(out, torch.tensor([-2.25, -2.5]))
    with pytest.raises(ValueError, match="overlap"):
        mixed_action_logprob(TOKEN_LOGP, THOUGHT, ACTION, 0.5, THOUGHT, 1.0)
