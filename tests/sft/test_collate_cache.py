"""The SFT collator's cache (sft/collate_cache.py): batches bit-identical to collating from scratch, for every
family, on real NumberLine data (with and without earlier turns), when samples are cut or dropped for length,
and when the cache is too small to hold everything."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from PIL import Image

from vlmppo.config import load_config
from vlmppo.config.schema import ModelConfig
from vlmppo.data.collect import collect
from vlmppo.data.label import label
from vlmppo.data.preprocess import preprocess
from vlmppo.models.loading import load_model
from vlmppo.registry import FAMILIES
from vlmppo.sft.collate_cache import CollateCache
from vlmppo.sft.dataset import SftCollator, SftExample, load_sft_examples


def assert_identical(expected, got) -> None:
    assert list(got.keys()) == list(expected.keys())
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key


def batches(examples, size, seed=0, count=6):
    """Seeded random batches that repeat samples (cache hits) and mix them (different paddings)."""
    rng = random.Random(seed)
    return [rng.choices(examples, k=size) for _ in range(count)]


@pytest.fixture(scope="module")
def numberline(tmp_path_factory):
    """Real NumberLine data through the product's collect/label/preprocess, with 0 and 2 earlier turns."""
    out = tmp_path_factory.mktemp("numberline")
    data = {}
    for history in (0, 2):
        cfg = load_config(
            "numberline-tiny",
            overrides=[f"run.output_dir={out}", f"run.name=h{history}", f"env.history={history}",
                       "collect.episodes=5", "preprocess.val_fraction=0", "preprocess.dedupe=false"],
        )  # fmt: skip
        collect(cfg)
        label(cfg)
        preprocess(cfg)
        data[history] = load_sft_examples(out / f"h{history}" / "data" / "train.jsonl")
    loaded = load_model(cfg.model.model_copy(update={"lora": None}), for_training=False)
    return loaded, data


@pytest.mark.parametrize("history", [0, 2])
def test_numberline_batches_are_bit_identical_to_the_uncached_collator(numberline, history):
    loaded, data = numberline
    examples = data[history]
    assert len({e.image for e in examples}) > 8 and any(len(e.history) == history for e in examples)
    cached, plain = SftCollator(loaded, 4096), SftCollator(loaded, 4096, cache=False)
    for batch in batches(examples, 8):
        assert_identical(plain(batch), cached(batch))
    assert cached.cache.hits > 0 and cached.cache.misses > 0
    # Episodes share frames: fewer distinct image entries than samples collated from scratch.
    assert len(cached.cache.pixels.entries) <= cached.cache.misses


def test_cut_and_dropped_samples_match_too(numberline):
    loaded, data = numberline
    # Every other sample gets a longer answer, a few tokens past the limit.
    examples = [
        e if i % 2 else replace(e, answer=e.answer + " and then some") for i, e in enumerate(data[0][:20])
    ]
    limit = max(len(SftCollator(loaded, 4096, cache=False)([e])["input_ids"][0]) for e in examples[1::2])
    for mode in ("truncate", "skip"):
        cached, plain = SftCollator(loaded, limit, mode), SftCollator(loaded, limit, mode, cache=False)
        for batch in batches(examples, 6, seed=1):
            assert_identical(plain(batch), cached(batch))
        assert (cached.truncated, cached.skipped) == (plain.truncated, plain.skipped)
        assert cached.truncated + cached.skipped > 0


def test_a_cache_smaller_than_the_data_evicts_and_stays_exact(numberline):
    loaded, data = numberline
    examples = data[0]
    cached, plain = SftCollator(loaded, 4096), SftCollator(loaded, 4096, cache=False)
    one = plain([examples[0]])
    cached.cache = CollateCache(row_budget=3 * one["input_ids"].numel() * 8,
                                pixel_budget=2 * one["pixel_values"].numel() * 4)  # fmt: skip
    for batch in batches(examples, 5, seed=2):
        assert_identical(plain(batch), cached(batch))
    assert len(cached.cache.rows.entries) <= 3 and len(cached.cache.pixels.entries) <= 2
    assert cached.cache.pixels.bytes <= cached.cache.pixels.max_bytes


@pytest.fixture(scope="module", params=FAMILIES)
def family_examples(request, tmp_path_factory):
    """Frames of two sizes (LLaVA-NeXT: different crop counts), shared by samples with different texts."""
    root = tmp_path_factory.mktemp(request.param)
    frames = []
    for k, (size, colour) in enumerate([((64, 64), (200, 10, 10)), ((64, 64), (10, 200, 10)),
                                        ((96, 48), (10, 10, 200))]):  # fmt: skip
        frames.append(root / f"f{k}.png")
        Image.new("RGB", size, colour).save(frames[-1])
    answers = ['{"action": "+"}', '{"thoughts": "a longer answer", "action": "-"}']
    examples = [SftExample(f"Where {p}?", answers[(p + f) % 2], frames[f], f"x:{p}") for p in range(3)
                for f in range(3)]  # fmt: skip
    examples.append(SftExample("Again?", answers[0], frames[0], "x:h", ((frames[1], answers[1]),)))
    loaded = load_model(ModelConfig(family=request.param, path=f"tiny:{request.param}"), for_training=False)
    return loaded, examples


def test_every_family_collates_bit_identical_batches(family_examples):
    loaded, examples = family_examples
    cached, plain = SftCollator(loaded, 4096), SftCollator(loaded, 4096, cache=False)
    same_size = [e for e in examples if e.image.name != "f2.png"]
    for batch in [*batches(same_size, 4, seed=3), *batches(examples, 4, seed=4)]:
        assert_identical(plain(batch), cached(batch))
    assert cached.cache.hits > 0


def test_the_cache_keys_on_file_contents_not_paths(tmp_path, numberline):
    loaded, _ = numberline
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / name)
    cached = SftCollator(loaded, 4096)
    cached([SftExample("q", "a", tmp_path / "a.png"), SftExample("q", "b", tmp_path / "b.png")])
    assert len(cached.cache.pixels.entries) == 1 and len(cached.cache.rows.entries) == 2
    assert cached.cache.digest(tmp_path / "a.png") == cached.cache.digest(tmp_path / "b.png")


def test_qwen_batches_carry_the_models_own_position_ids_and_the_same_logits(family_examples):
    loaded, examples = family_examples
    batch = SftCollator(loaded, 4096)(examples[-4:])  # with padding, two frame sizes, a row with two images
    if not loaded.family.name.startswith("qwen"):
        assert "position_ids" not in batch
        return
    positions = batch.pop("position_ids")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    own, _ = loaded.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                               inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])  # fmt: skip
    assert positions.dtype == own.dtype and torch.equal(positions, own)
    assert int(positions.max()) < int(inputs["attention_mask"].sum(1).max())  # images take fewer positions
    with torch.no_grad():
        given = loaded.model(**inputs, position_ids=positions).logits
        computed = loaded.model(**inputs).logits
    assert torch.equal(given, computed)


def test_an_image_gone_since_loading_is_a_data_error(tmp_path, numberline):
    from vlmppo.errors import DataError

    loaded, _ = numberline
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "a.png")
    example = SftExample("q", "a", tmp_path / "a.png", "train.jsonl:7")
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match=r"train.jsonl:7: image .*a.png cannot be read"):
        SftCollator(loaded, 4096)([example])
