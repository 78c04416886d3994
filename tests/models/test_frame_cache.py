"""The processed-frame cache (``models/frame_cache.py``): ``build_inputs`` gives the same tensors, bit for
bit, whether frames come from the cache or from the image processor, and whether repeated prompts are
tokenized once or each, for every family's processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.envs import make_vec_env
from vlmppo.models import frame_cache
from vlmppo.models.inputs import build_inputs, to_pil


@pytest.fixture
def no_cache_after():
    yield
    frame_cache.set_max_bytes(frame_cache.DEFAULT_MAX_BYTES)


def numberline_frames(count: int) -> list:
    """NumberLine start frames of ``count`` envs: many repeat (it has 30 distinct frames)."""
    vec = make_vec_env("gym_cards/NumberLine-v0", count, 0)
    frames, _ = vec.reset()
    return [to_pil(frame) for frame in frames]


def uncached(loaded, images, prompts):
    frame_cache.set_max_bytes(0)
    try:
        return build_inputs(loaded, images, prompts)
    finally:
        frame_cache.set_max_bytes(frame_cache.DEFAULT_MAX_BYTES)


def assert_same_batch(got, want) -> None:
    assert list(got.keys()) == list(want.keys())
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_cached_processing_give_the_processor_output_bit_for_bit(frozen_models, family, no_cache_after):
    loaded = frozen_models[family]
    images = numberline_frames(12)
    # repeated prompts of two lengths (tokenized once each, padded as a batch) and one of its own
    prompts = ["short", "a much longer prompt, " * 4] * 5 + ["another", "short"]
    want = uncached(loaded, images, prompts)
    cache = frame_cache.cache_of(loaded.processor.image_processor)
    cache.entries.clear()
    cache.bytes = cache.hits = cache.misses = 0
    first = build_inputs(loaded, images, prompts)
    assert 0 < cache.misses < len(images)  # repeated frames are processed once
    again = build_inputs(loaded, images[::-1], prompts)  # every frame from the cache, in another order
    assert cache.hits >= len(images)
    assert_same_batch(first, want)
    assert_same_batch(again, uncached(loaded, images[::-1], prompts))
    assert not isinstance(loaded.processor.image_processor, frame_cache._CachingImageProcessor)


def test_a_small_bound_evicts_and_still_gives_the_same_output(frozen_models, no_cache_after):
    loaded = frozen_models["qwen2-vl"]
    images = numberline_frames(10)
    prompts = ["p"] * len(images)
    per_frame = build_inputs(loaded, images[:1], prompts[:1])["pixel_values"]
    frame_cache.set_max_bytes(int(3.5 * per_frame.numel() * per_frame.element_size()))  # 3 frames
    cache = frame_cache.cache_of(loaded.processor.image_processor)
    assert len(cache.entries) <= 3
    got = build_inputs(loaded, images, prompts)
    assert cache.bytes <= cache.max_bytes and len(cache.entries) == 3
    assert_same_batch(got, uncached(loaded, images, prompts))


def test_frames_of_different_sizes_match_the_processor(frozen_models, family, no_cache_after):
    """LLaVA-NeXT pads frames of different sizes to one number of views: the cache steps aside there, and
    every family still gives the processor's own output."""
    loaded = frozen_models[family]
    rng = np.random.default_rng(0)
    images = [
        to_pil(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for h, w in ((64, 64), (40, 96), (64, 64))
    ]
    prompts = ["p"] * len(images)
    assert_same_batch(build_inputs(loaded, images, prompts), uncached(loaded, images, prompts))
    assert_same_batch(build_inputs(loaded, images, prompts), uncached(loaded, images, prompts))


def test_frame_keys_tell_pixels_size_and_mode_apart():
    base = np.zeros((4, 6, 3), dtype=np.uint8)
    changed = base.copy()
    changed[3, 5, 2] = 1
    keys = {frame_cache.frame_key(to_pil(a)) for a in (base, changed, base.reshape(6, 4, 3))}
    keys.add(frame_cache.frame_key(to_pil(base).convert("L")))
    assert len(keys) == 4 and frame_cache.frame_key(to_pil(base)) in keys
    assert frame_cache.frame_key("not an image") is None


def test_frames_kept_on_a_device_give_the_same_batch(frozen_models, no_cache_after):
    """``LoadedModel.frame_device`` (the GPU in PPO): the cached frames live and are joined there; here the
    host stands in for it."""
    import dataclasses

    loaded = dataclasses.replace(frozen_models["qwen2-vl"], frame_device="cpu")
    images = numberline_frames(6)
    prompts = ["p"] * len(images)
    want = uncached(loaded, images, prompts)
    for _ in range(2):
        assert_same_batch(build_inputs(loaded, images, prompts), want)
    setting_devices = {key[0][2] for key in frame_cache.cache_of(loaded.processor.image_processor).entries}
    assert "cpu" in setting_devices
