"""Qwen2-VL's vision tower without per-image loops (models/qwen_vision.py): swapped in at load for SDPA, the same
features and gradients as the stock tower, for same-size frames (one batched call) and mixed sizes (the stock
loop), and nothing changed in what is saved."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen

from vlmppo.config.schema import ModelConfig
from vlmppo.models.inputs import build_inputs
from vlmppo.models.loading import load_model
from vlmppo.models.qwen_vision import BatchedVisionAttention, CachedPositionsVisionTower


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    return load_model(ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", lora=None), for_training=True)


def stock_copy(model):
    """A copy of the model with transformers' own classes back in place."""
    stock = copy.deepcopy(model)
    stock.model.visual.__class__ = qwen.Qwen2VisionTransformerPretrainedModel
    for block in stock.model.visual.blocks:
        block.attn.__class__ = qwen.VisionAttention
    return stock


def frames(sizes):
    return [Image.new("RGB", size, (40 * k % 255, 90, 200 - 30 * k)) for k, size in enumerate(sizes)]


def test_loading_swaps_the_loop_free_classes_in(loaded):
    visual = loaded.model.model.visual
    assert type(visual) is CachedPositionsVisionTower
    assert all(type(block.attn) is BatchedVisionAttention for block in visual.blocks)


@pytest.mark.parametrize("sizes", [[(64, 64)] * 5, [(64, 64), (96, 48), (64, 64)]], ids=["same", "mixed"])
def test_features_and_gradients_match_the_stock_tower(loaded, sizes):
    batch = build_inputs(loaded, frames(sizes), ["q"] * len(sizes), answers=["a"] * len(sizes))
    labels = batch.pop("labels")
    ours, stock = loaded.model, stock_copy(loaded.model)
    results = []
    for model in (ours, stock):
        model.zero_grad(set_to_none=True)
        out = model(**batch, labels=labels)
        out.loss.backward()
        grads = {
            n: p.grad.clone() for n, p in model.named_parameters() if "visual" in n and p.grad is not None
        }
        results.append((out.logits.detach(), grads))
    (logits, grads), (stock_logits, stock_grads) = results
    assert torch.allclose(logits, stock_logits, atol=1e-6, rtol=1e-5)
    assert grads.keys() == stock_grads.keys() and len(grads) > 10
    for name in grads:
        assert torch.allclose(grads[name], stock_grads[name], atol=1e-6, rtol=1e-4), name
    ours.zero_grad(set_to_none=True)


def test_position_ids_are_kept_per_grid_tuple_and_equal_the_stock_ones(loaded):
    from transformers.vision_utils import get_vision_position_ids

    visual = loaded.model.model.visual
    grid = torch.tensor([[1, 4, 4], [1, 6, 2], [1, 4, 4]])
    first = visual._positions(grid)
    assert first is visual._positions(grid.clone())  # kept, not rebuilt
    assert torch.equal(first, get_vision_position_ids(grid, visual.spatial_merge_size))


def test_eager_attention_and_qwen25_keep_the_stock_classes(tmp_path):
    eager = load_model(ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", attn_implementation="eager"),
                       for_training=False)  # fmt: skip
    assert type(eager.model.model.visual) is qwen.Qwen2VisionTransformerPretrainedModel
    windowed = load_model(ModelConfig(family="qwen2.5-vl", path="tiny:qwen2.5-vl"), for_training=False)
    assert "CachedPositions" not in type(windowed.model.model.visual).__name__


def test_a_saved_model_is_the_stock_model(loaded, tmp_path):
    loaded.model.save_pretrained(tmp_path)
    loaded.processor.save_pretrained(tmp_path)
    again = load_model(ModelConfig(family="qwen2-vl", path=str(tmp_path), lora=None), for_training=False)
    assert type(again.model.model.visual) is CachedPositionsVisionTower
    state, saved = loaded.model.state_dict(), again.model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k].cpu(), saved[k].cpu()) for k in state)
