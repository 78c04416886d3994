"""The token that ends an assistant turn, read from the chat template, made the tokenizer's eos.

Every stage treats ``tokenizer.eos_token`` as the end of an answer: SFT puts it (and only it) after the
answer in the labels, generation stops on it, PPO scores answers through it. For instruct checkpoints that
is already right (Qwen-VL-Instruct: ``<|im_end|>``; LLaVA: ``</s>``). A checkpoint whose template closes
the assistant turn with another special token than its eos (a Qwen-VL *base* model: eos
``<|endoftext|>``, turns closed by ``<|im_end|>``) would be taught to end answers with a token its chat
format never uses; so the template's end-of-turn token becomes the eos when the two differ. Templates
that close the turn with plain text (llava-hf's ends the answer with a space) keep their eos: the model
ends its answers with eos there.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_MARK = "vlmppo-answer-ends-here"


def template_end_of_turn(processor) -> str | None:
    """The special token the chat template writes right after an assistant message, or None."""
    tokenizer = processor.tokenizer
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": _MARK}]},
    ]
    try:
        rendered = processor.apply_chat_template(conversation, tokenize=False)
    except Exception:  # a template that cannot render an assistant turn: nothing to learn from it
        return None
    at = rendered.find(_MARK)
    if at < 0:
        return None
    tail = rendered[at + len(_MARK) :].lstrip(" ")
    # Special tokens include added ones flagged special (Qwen's <|im_end|> need not be a named one).
    special = set(tokenizer.all_special_tokens)
    special |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    special = sorted(special, key=len, reverse=True)  # longest match first
    return next((token for token in special if tail.startswith(token)), None)


def align_eos_with_template(processor) -> None:
    """Make the tokenizer's eos the template's end-of-turn token when the template has one."""
    tokenizer = processor.tokenizer
    end = template_end_of_turn(processor)
    if end is not None and end != tokenizer.eos_token:
        log.info("eos %r -> %r: the chat template ends assistant turns with it", tokenizer.eos_token, end)
        tokenizer.eos_token = end
