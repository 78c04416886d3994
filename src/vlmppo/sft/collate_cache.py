"""The SFT collator's cache: each distinct sample is decoded, processed and tokenized once per process.

Collating a sample from scratch (decode its PNG, resize/normalise/patch the image, apply the chat template,
tokenize) costs milliseconds of CPU, and an SFT run collates every sample many times (one per epoch) from a set
where frames repeat a lot: NumberLine has ~30 distinct frames, MiniGrid a few hundred. So the collator keeps,
per process (each loader worker its own):

* the digest of each image file's bytes (read once per path);
* per distinct tuple of image digests: the processor's image tensors of that sample (``pixel_values``,
  ``image_grid_thw``, ...), shared by every sample showing the same frames;
* per distinct sample (image digests, prompt, answer, earlier answers): its token rows (``input_ids``,
  ``labels``, ``attention_mask``, per-token type ids), unpadded.

A batch is then the rows left-padded exactly as ``build_inputs`` pads them and the image tensors concatenated
in sample order, which is what the processor returns for the whole batch: per image and per text its work does
not depend on the rest of the batch (tests/sft/test_collate_cache.py checks the batches are bit-identical for
every family). Where that does not hold (LLaVA-NeXT frames with different numbers of crops in one batch), the
batch is collated the uncached way. Both caches are bounded (least recently used entries go first).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vlmppo.errors import DataError
from vlmppo.models.frame_cache import FrameCache

ROW_BUDGET = 256 * 2**20  # bytes of token rows per process
PIXEL_BUDGET = 768 * 2**20  # bytes of image tensors per process (NumberLine's 30 small-model frames: ~20 MB)


class CollateCache:
    """What a collator keeps between batches; ``hits``/``misses`` count samples."""

    def __init__(self, row_budget: int = ROW_BUDGET, pixel_budget: int = PIXEL_BUDGET):
        self.digests: dict[Path, str] = {}
        # Both bounded in bytes, least recently used out first: the rollout's processed-frame store does the same.
        self.rows, self.pixels = FrameCache(row_budget), FrameCache(pixel_budget)
        self.order: list[str] | None = None  # the keys of a batch, in the processor's order
        self.hits = self.misses = 0

    def digest(self, path: Path, source: str = "") -> str:
        """The digest of an image file's bytes, read once per path (a dataset's frames do not change in a run)."""
        found = self.digests.get(path)
        if found is None:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise DataError(f"{source}: image {path} cannot be read ({exc}).") from None
            found = self.digests[path] = hashlib.blake2b(data, digest_size=16).hexdigest()
        return found

    def lookup(self, example) -> tuple[tuple, tuple, dict | None, dict | None]:
        """(row key, pixel key, cached rows or None, cached image tensors or None) of an ``SftExample``."""
        images = [frame for frame, _ in example.history] + [example.image]
        frames = tuple(self.digest(image, example.source) for image in images)
        key = (frames, example.prompt, example.answer, tuple(answer for _, answer in example.history))
        return key, frames, self.rows.get(key), self.pixels.get(frames)

    def store(self, key: tuple, frames: tuple, single) -> tuple[dict, dict]:
        """Split a one-sample batch (from the uncached path) into its rows and image tensors, and keep both."""
        width = single["input_ids"].shape
        rows = {k: v[0] for k, v in single.items() if torch.is_tensor(v) and v.shape == width}
        pixels = {k: v for k, v in single.items() if k not in rows}
        if self.order is None:
            self.order = list(single.keys())
        self.rows.put(key, rows)
        self.pixels.put(frames, pixels)
        return rows, pixels


def merge(cache: CollateCache, parts: list[tuple[dict, dict]], pad_id: int, ignore_index: int):
    """The batch of the samples' (rows, image tensors), as ``build_inputs`` would collate it; None when the
    image tensors do not concatenate (different shapes past the first dimension) or are not all tensors."""
    from transformers import BatchFeature

    batch = {}
    for key in parts[0][1]:
        values = [pixels[key] for _, pixels in parts]
        if not all(torch.is_tensor(v) and v.shape[1:] == values[0].shape[1:] for v in values):
            return None
        batch[key] = torch.cat(values, dim=0)
    length = max(len(rows["input_ids"]) for rows, _ in parts)
    for key, first in parts[0][0].items():
        fill = pad_id if key == "input_ids" else ignore_index if key == "labels" else 0
        out = torch.full((len(parts), length), fill, dtype=first.dtype)
        for i, (rows, _) in enumerate(parts):
            row = rows[key]
            out[i, length - len(row) :] = row
        batch[key] = out
    return BatchFeature({key: batch[key] for key in cache.order})
