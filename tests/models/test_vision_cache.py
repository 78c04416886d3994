"""Image features computed once per distinct frame (models/vision_cache.py): bit for bit what the vision tower
gives for the whole batch, recomputed whenever the weights change, never cached for adapter-wrapped towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.models.generation import to_pil
from vlmppo.models.inputs import build_inputs
from vlmppo.models.prompt_embeds import backbone_of, embed_prompts
from vlmppo.models.vision_cache import (
    FeatureCache,
    cache_of,
    clear_feature_cache,
    compute_features,
    image_features,
)
from vlmppo.registry import FAMILIES


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    torch.manual_seed(0)
    return load_model(
        ModelConfig(family=request.param, path=f"tiny:{request.param}", lora=None), for_training=False
    )


def _frames(seed: int, count: int, sizes=(64, 80)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8) for s in rng.choice(sizes, count)]


def _batch(loaded, frames):
    return build_inputs(loaded, [to_pil(f) for f in frames], [f"prompt {i}" for i in range(len(frames))])


def _uncached(backbone, batch) -> torch.Tensor:
    extra = {k: batch[k] for k in ("image_grid_thw", "image_sizes") if k in batch}
    with torch.no_grad():
        return torch.cat(compute_features(backbone, batch["pixel_values"], extra))


def test_repeated_frames_are_computed_once_and_give_the_towers_own_features(loaded):
    backbone = backbone_of(loaded.model)
    distinct = _frames(0, 3)
    step_one = _batch(loaded, [distinct[i] for i in (0, 1, 0, 2, 1, 0)])
    step_two = _batch(loaded, [distinct[2], _frames(1, 1)[0], distinct[0], distinct[2]])
    cache = FeatureCache()
    with torch.no_grad():
        first = image_features(backbone, step_one, cache)
        assert (cache.misses, cache.hits) == (3, 3)  # three distinct frames, each through the tower once
        second = image_features(backbone, step_two, cache)
        assert (cache.misses, cache.hits) == (4, 6)  # only the new frame
    assert torch.equal(first, _uncached(backbone, step_one))
    assert torch.equal(second, _uncached(backbone, step_two))


def test_a_changed_weight_or_an_explicit_clear_recomputes_the_features(loaded):
    backbone = backbone_of(loaded.model)
    batch = _batch(loaded, _frames(2, 2))
    cache = FeatureCache()
    some_weight = next(p for n, p in backbone.named_parameters() if not n.startswith("language_model"))
    saved = some_weight.detach().clone()
    with torch.no_grad():
        before = image_features(backbone, batch, cache)
        some_weight.mul_(1.5)  # in place, as an optimizer step: the parameter's version moves
        try:
            after = image_features(backbone, batch, cache)
            assert cache.misses == 4
            assert not torch.equal(after, before)
            assert torch.equal(after, _uncached(backbone, batch))
        finally:
            some_weight.copy_(saved)
        # A change the signature cannot see (a fused optimizer's): the explicit clear covers it.
        some_weight.data.mul_(2.0)
        clear_feature_cache(loaded.model)
        try:
            assert torch.equal(
                image_features(backbone, batch, cache_of(backbone)), _uncached(backbone, batch)
            )
        finally:
            some_weight.data.copy_(saved)
            clear_feature_cache(loaded.model)
    assert not cache_of(backbone).entries


def test_prompt_embeddings_are_identical_with_and_without_the_cache(loaded):
    backbone = backbone_of(loaded.model)
    frames = _frames(3, 2)
    batch = _batch(loaded, [frames[0], frames[1], frames[0]])
    cache = cache_of(backbone)
    clear_feature_cache(loaded.model)
    cached = [embed_prompts(loaded.model, batch) for _ in range(2)]  # the second from the cache alone
    cache.max_bytes = 0
    try:
        plain = embed_prompts(loaded.model, batch)
    finally:
        cache.max_bytes = FeatureCache().max_bytes
    assert cache.hits >= 3
    for got in cached:
        assert torch.equal(got.embeds, plain.embeds)


def test_a_vision_tower_carrying_lora_is_never_cached():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", lora=None), for_training=False)
    model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["qkv"]))
    backbone = backbone_of(model)
    frame = _frames(4, 1)[0]
    batch = build_inputs(loaded, [to_pil(frame)] * 2, ["a", "b"])
    with torch.no_grad():
        image_features(backbone, batch)
    assert cache_of(backbone).misses == 0 and not cache_of(backbone).entries
