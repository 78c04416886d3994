"""Decoding settings are vlmppo's own: the tiny models' hostile generation_config.json never gets in unasked."""

from __future__ import annotations

import torch
from PIL import Image

from vlmppo.models import build_inputs
from vlmppo.models.generation import (
    Generator,
    describe_generation,
    explicit_generation_config,
    media_token_ids,
)


def hand_greedy(loaded, batch, steps: int) -> list[list[int]]:
    """Greedy decoding by hand: argmax of the model's own next-token logits (placeholders banned), no cache."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    banned = torch.tensor(media_token_ids(loaded.model))
    eos = loaded.tokenizer.eos_token_id
    answers: list[list[int]] = [[] for _ in range(len(ids))]
    for _ in range(steps):
        if "mm_token_type_ids" in extra:  # Qwen2-VL needs it over the whole sequence: 0 on answer tokens
            pad = torch.zeros(len(ids), ids.shape[1] - batch["input_ids"].shape[1], dtype=torch.long)
            extra = {**extra, "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"], pad], dim=1)}
        with torch.no_grad():
            logits = loaded.model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1]
        nxt = logits.index_fill(-1, banned, float("-inf")).argmax(-1)
        for row, token in zip(answers, nxt.tolist(), strict=True):
            if not row or row[-1] != eos:
                row.append(token)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return answers


def test_greedy_answers_are_the_argmax_of_the_logits_whatever_the_checkpoint_ships(frozen_models, family):
    loaded = frozen_models[family]
    saved = loaded.model.generation_config
    assert saved.repetition_penalty != 1.0 and saved.no_repeat_ngram_size and saved.do_sample  # hostile
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (96, 64), (30, 30, 200))]
    prompts = ["Which way?", "A longer prompt, so that the first one is left-padded in the batch."]
    _, ids = Generator(loaded).generate_answers(images, prompts, temperature=0, max_new_tokens=10)
    assert ids == hand_greedy(loaded, build_inputs(loaded, images, prompts), 10)
    assert loaded.model.generation_config is saved  # hidden during the call only, then back


def test_checkpoint_generation_takes_the_checkpoints_settings_with_our_end_of_turn(frozen_models):
    loaded = frozen_models["qwen2-vl"]
    tok = loaded.tokenizer
    own = Generator(loaded, generation="checkpoint").generation_config(temperature=0, max_new_tokens=7)
    assert (own.do_sample, own.top_k, own.min_p, own.repetition_penalty) == (True, 20, 0.05, 1.05)
    assert own.no_repeat_ngram_size == 3 and own.max_new_tokens == 7
    assert own.eos_token_id == tok.eos_token_id and set(media_token_ids(loaded.model)) <= set(
        own.suppress_tokens
    )
    assert "repetition_penalty=1.05" in describe_generation(own) and "top_k=20" in describe_generation(own)


def test_explicit_settings_are_plain_greedy_or_plain_sampling():
    class Tok:
        eos_token_id, pad_token_id, bos_token_id = 2, 0, None

    greedy = explicit_generation_config(Tok, [7], temperature=0, max_new_tokens=5)
    sampled = explicit_generation_config(Tok, [7], temperature=0.7, max_new_tokens=5)
    assert describe_generation(greedy) == "greedy" and not greedy.do_sample
    assert describe_generation(sampled) == "sampled at temperature 0.7"
    for config in (greedy, sampled):
        assert (config.repetition_penalty, config.no_repeat_ngram_size, config.min_p) == (1.0, 0, None)
        assert config.suppress_tokens == [7] and config.eos_token_id == 2 and config.num_beams == 1
    assert (sampled.top_k, sampled.top_p) == (0, 1.0)


def test_a_checkpoint_without_decoding_settings_is_described_as_what_generate_runs():
    from transformers import GenerationConfig

    from vlmppo.models.generation import checkpoint_generation_config

    class Tok:
        eos_token_id, pad_token_id, bos_token_id = 2, 0, None

    class Bare:  # a checkpoint whose generation_config.json sets no decoding field
        generation_config = GenerationConfig(eos_token_id=3)

    config = checkpoint_generation_config(Bare, Tok, [7], max_new_tokens=4)
    assert describe_generation(config) == "greedy" and config.top_k == 50  # transformers' own defaults
    assert config.eos_token_id == 2 and config.suppress_tokens == [7] and config.max_new_tokens == 4
    assert Bare.generation_config.eos_token_id == 3  # the model's own config is not changed
