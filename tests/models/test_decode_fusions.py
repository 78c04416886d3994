"""Fused RMSNorms in decode steps (models/decode_fusions.py): the stock normalisation within rounding, the same
greedy answers, and the modules left as they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.models.decode_fusions import fused_norms, fused_rotary, plain_norms, rotary_modules
from vlmppo.models.generation import media_token_ids, to_pil
from vlmppo.models.inputs import build_inputs
from vlmppo.models.static_decode import SamplingSpec, StaticDecoder
from vlmppo.registry import FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    torch.manual_seed(0)
    return load_model(
        ModelConfig(family=request.param, path=f"tiny:{request.param}", lora=None), for_training=False
    )


def test_every_norm_of_each_familys_language_model_is_fused_and_restored_after(loaded):
    language_model = loaded.model.model.language_model
    norms = plain_norms(language_model)
    assert len(norms) == 2 * language_model.config.num_hidden_layers + 1  # two per layer and the last
    x = torch.randn(3, 5, language_model.config.hidden_size)
    stock = [norm(x) for norm in norms]
    with fused_norms(norms):
        assert all("forward" in vars(norm) for norm in norms)
        fused = [norm(x) for norm in norms]
    assert not any("forward" in vars(norm) for norm in norms)
    for a, b in zip(fused, stock, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_in_bf16_the_fused_norm_is_within_one_rounding_of_the_stock_one(loaded):
    norm = plain_norms(loaded.model.model.language_model)[0]
    x = torch.randn(64, norm.weight.shape[0]).to(torch.bfloat16)
    saved = norm.weight.data
    norm.weight.data = (1 + torch.rand_like(saved)).to(torch.bfloat16)
    try:
        stock = norm(x)
        with fused_norms([norm]):
            fused = norm(x)
    finally:
        norm.weight.data = saved
    assert fused.dtype == stock.dtype == torch.bfloat16
    # one bf16 rounding: a relative 2^-8 of the value
    assert ((fused.float() - stock.float()).abs() <= stock.float().abs() * 2**-7 + 1e-6).all()


def test_greedy_answers_and_log_probs_are_those_of_the_stock_norms_and_rotary(loaded):
    rng = np.random.default_rng(0)
    images = [to_pil(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    batch = build_inputs(loaded, images, ["left?", "right or left?", "go"])
    tok = loaded.tokenizer
    spec = SamplingSpec(0.0, 10, tok.eos_token_id, tok.pad_token_id, tuple(media_token_ids(loaded.model)))
    stock = StaticDecoder(loaded.model)
    stock.fuse_norms = stock.fuse_rotary = False
    fused = StaticDecoder(loaded.model)
    assert fused.fuse_norms and fused.fuse_rotary
    assert torch.equal(fused.generate(batch, spec), stock.generate(batch, spec))
    torch.testing.assert_close(fused.last_logp, stock.last_logp, atol=1e-5, rtol=0)


def test_the_rotation_matrix_rotates_one_token_as_the_stock_rotary_embedding(loaded):
    language_model = loaded.model.model.language_model
    owners = rotary_modules(language_model)
    assert len(owners) == 1
    stock = owners[0].apply_rotary_pos_emb
    torch.manual_seed(0)
    b, heads, kv, d = 5, 4, 2, 16
    q, k = torch.randn(b, heads, 1, d), torch.randn(b, kv, 1, d)
    angles = torch.rand(b, 1, d // 2) * 40
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    with fused_rotary(owners):
        fused = owners[0].apply_rotary_pos_emb(q, k, cos, sin)
        prefill_shape = owners[0].apply_rotary_pos_emb(
            q.expand(b, heads, 3, d), k.expand(b, kv, 3, d), cos.expand(b, 3, d), sin.expand(b, 3, d)
        )
    assert owners[0].apply_rotary_pos_emb is stock
    for a, e in zip(fused, stock(q, k, cos, sin), strict=True):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-5)
    for a, e in zip(
        prefill_shape,
        stock(q.expand(b, heads, 3, d), k.expand(b, kv, 3, d), cos.expand(b, 3, d), sin.expand(b, 3, d)),
        strict=True,
    ):
        assert torch.equal(a, e)  # more than one token: the stock function itself
