"""``prompt_embeds.rope_index``: the M-RoPE positions of a batch computed once per distinct row on the host
equal transformers' ``get_rope_index`` over every row, for Qwen2-VL and Qwen2.5-VL, with repeated and
different prompts, frames of several sizes, left padding, and several frames per row (``env.history``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.models.inputs import Turn, build_inputs, to_pil
from vlmppo.models.prompt_embeds import backbone_of, rope_index


@pytest.fixture(scope="module", params=["qwen2-vl", "qwen2.5-vl"])
def loaded(request):
    return load_model(
        ModelConfig(family=request.param, path=f"tiny:{request.param}", lora=None), for_training=False
    )


def frames(sizes) -> list:
    rng = np.random.default_rng(0)
    return [to_pil(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.mark.parametrize("with_history", [False, True])
def test_rope_index_equals_transformers_row_by_row(loaded, with_history):
    sizes = [(64, 64), (64, 64), (40, 96), (64, 64), (96, 40), (64, 64)]
    prompts = [
        "which way?",
        "which way?",
        "which way?",
        "a longer prompt, which way?",
        "which way?",
        "which way?",
    ]
    histories = None
    if with_history:  # rows with 0, 1 or 2 earlier frames of several sizes
        turn = [Turn(f, "left") for f in frames([(64, 64), (40, 96)])]
        histories = [(), turn[:1], turn, (), turn[:1], turn[:1]]
    batch = build_inputs(loaded, frames(sizes), prompts, histories=histories)
    backbone = backbone_of(loaded.model)
    args = (batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], batch["attention_mask"])
    want = backbone.get_rope_index(args[0], args[1], image_grid_thw=args[2], attention_mask=args[3])
    got = rope_index(backbone, *args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].dtype == want[0].dtype and got[1].shape == want[1].shape
    assert len({tuple(want[0][:, row].flatten().tolist()) for row in range(len(prompts))}) >= 3  # rows differ
