"""Byte-level BPE tokenizers for the tiny models, trained locally on a small built-in corpus.

Byte-level BPE can encode any text, so the tiny models accept every prompt and answer; the corpus only
decides which strings get their own tokens (the JSON answer format, the env vocabulary, digits and
operators), which keeps prompt and answer token counts realistic enough for tests.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

VOCAB_SIZE = 512

_ACTIONS = (
    "left",
    "right",
    "forward",
    "turn left",
    "turn right",
    "move forward",
    "pick up",
    "drop",
    "toggle",
    "done",
    "hit",
    "stand",
    "+",
    "-",
    "*",
    "/",
    "=",
    "(",
    ")",
    "10",
    "1",
)
_PROMPTS = (
    "You are playing a game. You will see an image and choose an action.",
    "You are an expert card game player. Your goal is to win the game.",
    "You will see a target number and a current number in the image.",
    "Your goal is to move the current number closer to the target by adding or subtracting one.",
    "You are a robot in a grid world. You can turn left, turn right, move forward, pick up, drop or toggle.",
    "Reach the green goal square. Open the door with the key. The agent sees the grid in the image.",
    "Use all the cards to write a formula that equals 24 with + - * / = ( ) and the numbers.",
    "Your response should be a valid json file in the following format:",
    'Your answer must be one of "hit" or "stand". The dealer shows a card and you have a total.',
    "What is the color of the image? Answer red or blue. Think step by step, then choose the action.",
)
_THOUGHTS = (
    "The target is {a} and the current number is {b}, so I should move {d}.",
    "My total is {a} and the dealer shows {b}, so I should {h}.",
    "The goal is to the {d} and the door is closed, so I should {m}.",
    "I can make {a} + {b} = {c} and then use ( {a} * {b} ) / {c}.",
    "The image is {col}, so the answer is {d}.",
)


def training_corpus() -> list[str]:
    """The texts the tiny tokenizers are trained on (deterministic, ~2k lines).

    Returns:
        Prompts, thoughts and whole JSON answers in the format the envs ask for, plus number and
        formula strings, each repeated in proportion to how often such text appears in rollouts.
    """
    lines = list(_PROMPTS) * 8
    for a, b in itertools.product(range(0, 25, 3), range(1, 12, 2)):
        c = a + b
        for i, template in enumerate(_THOUGHTS):
            thought = template.format(
                a=a,
                b=b,
                c=c,
                d=("left", "right")[(a + i) % 2],
                h=("hit", "stand")[(b + i) % 2],
                m=_ACTIONS[3 + (a + b + i) % 7],
                col=("red", "blue")[(a + b) % 2],
            )
            action = _ACTIONS[(a * 7 + b + i) % len(_ACTIONS)]
            lines.append(json.dumps({"thoughts": thought, "action": action}))
            lines.append(
                json.dumps(
                    {"current number": str(b), "target number": str(a), "thoughts": thought, "action": action}
                )
            )
        lines.append(f"{a} + {b} = {c}; {c} - {b} = {a}; ({a} * {b}) / {max(b, 1)} = {a}")
    lines.extend(f'"action": "{action}"' for action in _ACTIONS)
    return lines


def train_byte_level_bpe(
    special_tokens: Sequence[str],
    *,
    qwen_pre_tokenizer: bool,
    vocab_size: int = VOCAB_SIZE,
):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on `training_corpus()`.

    Args:
        special_tokens: Tokens kept whole (chat markers, image placeholder, eos/pad); they get the
            first ids, so none is ever hard-coded elsewhere: look them up by string.
        qwen_pre_tokenizer: Use Qwen2's own normalizer and pre-tokenizer (NFC, Qwen's split regex,
            byte level), taken from ``Qwen2Tokenizer`` itself. transformers 5.x re-installs exactly
            these on ``Qwen2Tokenizer.from_pretrained``, so training with them keeps ids identical
            after save/load. Otherwise a plain byte-level pre-tokenizer (GPT-2 style) is used.
        vocab_size: Target vocabulary size, special tokens included.

    Returns:
        The trained ``tokenizers.Tokenizer`` (no post-processor; callers add BOS handling).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if qwen_pre_tokenizer:
        from transformers import Qwen2Tokenizer

        reference = Qwen2Tokenizer().backend_tokenizer
        tokenizer.normalizer = reference.normalizer
        tokenizer.pre_tokenizer = reference.pre_tokenizer
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    return tokenizer


def vocab_and_merges(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary and merge list of a trained ``tokenizers.Tokenizer``."""
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges
