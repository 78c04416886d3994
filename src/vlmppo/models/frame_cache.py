"""Image-processor outputs kept between rollout steps, keyed by the frame's pixels.

A rollout shows the model the same few frames again and again (NumberLine has 30 distinct ones; a Blackjack
table or a MiniGrid room repeats too), and the image processor (resize, rescale, normalise, patchify) costs
milliseconds per frame on the host: ~0.6 s per 128-env step with the torchvision processor on an H200's
host, ~3 s with the PIL one on two cores. ``cached_processing`` wraps one processor call: frames seen before
reuse their processed tensors, the others go through the image processor in one call, and the batch is
assembled as the processor assembles it (concatenated along the first axis), so the output is the same,
bit for bit. A batch the processor would lay out otherwise (frames of different sizes that LLaVA-NeXT
pads, non-tensor outputs) is processed as before, without the cache. The same call tokenizes each distinct
text once (``_OncePerTextTokenizer``): ~0.1 s of Python per 128 identical prompts.

The key is a SHA-1 digest of the frame's bytes with its size and mode, plus the image processor's
settings and call arguments; entries are dropped least recently used first beyond ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import weakref
from collections import OrderedDict

import numpy as np

# 256 MiB (on the GPU in PPO): ~110 Qwen2-VL-2B frames of 300x300 (2.3 MB each), ~37 LLaVA-NeXT ones (6.8 MB)
DEFAULT_MAX_BYTES = 256 << 20


class FrameCache:
    """Least-recently-used processed frames of one image processor, bounded in bytes (any dict of tensors: the
    SFT collator keeps its token rows and image tensors in two of these).

    Attributes:
        max_bytes: The bound (0 disables the cache).
        hits / misses: Frames served from the cache / processed, since creation.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, dict] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key):
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def put(self, key, parts: dict) -> None:
        size = sum(t.numel() * t.element_size() for t in parts.values())
        if key in self.entries or size > self.max_bytes:
            return
        self.entries[key] = parts
        self.bytes += size
        self.trim()

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def trim(self) -> None:
        """Drop the least recently used entries until the cache fits ``max_bytes``."""
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= sum(t.numel() * t.element_size() for t in dropped.values())


_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SWAPPING = threading.RLock()
_max_bytes = DEFAULT_MAX_BYTES


def set_max_bytes(max_bytes: int) -> None:
    """Bound every image processor's cache from now on (0: no caching; the benchmark's "before")."""
    global _max_bytes
    _max_bytes = max_bytes
    for cache in list(_CACHES.values()):
        cache.max_bytes = max_bytes
        cache.trim()


def cache_of(image_processor) -> FrameCache:
    """The cache of ``image_processor`` (made on first use)."""
    cache = _CACHES.get(image_processor)
    if cache is None:
        cache = _CACHES[image_processor] = FrameCache(_max_bytes)
    return cache


def frame_key(image) -> bytes | None:
    """A digest of a PIL image's or uint8 array's pixels with its size and mode; None for anything else."""
    from PIL import Image

    if isinstance(image, Image.Image):
        header, data = f"{image.mode}{image.size}", image.tobytes()
    elif isinstance(image, np.ndarray):
        header, data = f"{image.dtype}{image.shape}", np.ascontiguousarray(image).data
    else:
        return None
    digest = hashlib.sha1(data)  # the fastest of hashlib's here (SHA extensions): ~0.15 ms a 300x300 frame
    digest.update(header.encode())
    return digest.digest()


def split_frames(out, count: int) -> list[dict] | None:
    """The per-frame parts of a batched image-processor output over ``count`` frames, such that
    concatenating them along the first axis gives ``out`` back; None when the output is not laid out so."""
    import torch

    if not all(torch.is_tensor(v) for v in out.values()):
        return None
    rows = [1] * count
    if "image_grid_thw" in out:  # Qwen: pixel_values holds each frame's patches, t*h*w rows per frame
        grid = out["image_grid_thw"]
        if grid.shape[0] != count:
            return None
        rows = [int(n) for n in grid.prod(dim=-1).tolist()]
    parts: list[dict] = [{} for _ in range(count)]
    for name, value in out.items():
        sizes = rows if name == "pixel_values" else [1] * count
        if value.dim() == 0 or value.shape[0] != sum(sizes):
            return None
        for frame, piece in enumerate(torch.split(value, sizes)):
            parts[frame][name] = piece.clone()  # its own storage: the batch tensor is not kept alive
    return parts


def join_frames(parts: list[dict]):
    """The batch the processor would return for these frames' parts, or None when they do not stack."""
    import torch
    from transformers.feature_extraction_utils import BatchFeature

    first = parts[0]
    if any(p.keys() != first.keys() for p in parts) or any(
        p[name].shape[1:] != first[name].shape[1:] or p[name].dtype != first[name].dtype
        for p in parts
        for name in first
    ):
        return None
    return BatchFeature({name: torch.cat([p[name] for p in parts]) for name in first})


class _CachingImageProcessor:
    """Stands in for an image processor during one processor call; everything but the call is the
    processor's own."""

    def __init__(self, inner, cache: FrameCache, device=None):
        self._inner, self._cache, self._device = inner, cache, device

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, images, **kwargs):
        return process_with_cache(self._inner, self._cache, images, kwargs, self._device)


def process_with_cache(inner, cache: FrameCache, images, kwargs: dict, device=None):
    """``inner(images, **kwargs)``, with the frames already in ``cache`` taken from it; ``device``: where the
    cached frames are kept and the batch is assembled (None: where the image processor put them)."""
    frames = list(images) if isinstance(images, (list, tuple)) else None
    digests = [frame_key(frame) for frame in frames] if frames and cache.max_bytes > 0 else None
    if not digests or any(d is None for d in digests):
        return inner(images, **kwargs)
    setting = (inner.to_json_string(), repr(sorted(kwargs.items(), key=lambda item: item[0])), str(device))
    keys = [(setting, digest) for digest in digests]
    found = {key: cache.get(key) for key in dict.fromkeys(keys)}
    missing = [key for key, parts in found.items() if parts is None]
    cache.hits += len(keys) - sum(1 for key in keys if found[key] is None)
    if missing:
        frame_of = dict(zip(keys, frames, strict=True))  # a repeated frame: any of its copies
        out = inner([frame_of[key] for key in missing], **kwargs)
        parts = split_frames(out, len(missing))
        if parts is None:
            return inner(images, **kwargs)
        cache.misses += len(missing)
        for key, frame_parts in zip(missing, parts, strict=True):
            if device is not None:
                frame_parts = {name: t.to(device) for name, t in frame_parts.items()}
            found[key] = frame_parts
            cache.put(key, frame_parts)
    joined = join_frames([found[key] for key in keys])
    return joined if joined is not None else inner(images, **kwargs)


# Tokenizer arguments under which each row is tokenized on its own and padded to the longest row.
_ROW_WISE_KWARGS = {
    "padding",
    "padding_side",
    "return_tensors",
    "add_special_tokens",
    "return_attention_mask",
}


class _OncePerTextTokenizer:
    """Stands in for a tokenizer during one processor call: a batch whose texts repeat (a rollout's prompts
    are mostly the same, frames of one size expand to the same image tokens) is tokenized one text each,
    and the rows are picked from that. Padded to the longest, the unique texts pad to the same length as
    all of them, so the tensors are the tokenizer's own, row for row."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, text=None, **kwargs):
        import torch
        from transformers.tokenization_utils_base import BatchEncoding

        plain = isinstance(text, list) and all(isinstance(t, str) for t in text)
        unique = list(dict.fromkeys(text)) if plain else None
        if (
            not unique
            or len(unique) == len(text)
            or not set(kwargs) <= _ROW_WISE_KWARGS  # a text pair, truncation, ...: as the tokenizer does it
            or kwargs.get("return_tensors") != "pt"
            or kwargs.get("padding") not in (True, "longest")
        ):
            return self._inner(text, **kwargs)
        out = self._inner(unique, **kwargs)
        if not all(torch.is_tensor(v) and v.shape[0] == len(unique) for v in out.values()):
            return self._inner(text, **kwargs)
        position = {t: i for i, t in enumerate(unique)}
        rows = torch.tensor([position[t] for t in text])
        return BatchEncoding({name: value[rows] for name, value in out.items()})


@contextlib.contextmanager
def cached_processing(processor, device=None):
    """During the block, ``processor``'s image processor reuses the outputs of frames it has processed
    before (see the module docstring) and its tokenizer tokenizes each distinct text of a batch once;
    afterwards both are the processor's own again (nothing of this is ever saved with the processor).
    ``device``: keep the processed frames there and assemble the batch there (on a GPU: no host copy of
    the batch's pixels and no transfer of them each step)."""
    with _SWAPPING:  # two threads must not swap the same processor's parts over each other
        inner = getattr(processor, "image_processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        if inner is None or tokenizer is None or _max_bytes <= 0:
            yield processor
            return
        processor.image_processor = _CachingImageProcessor(inner, cache_of(inner), device)
        processor.tokenizer = _OncePerTextTokenizer(tokenizer)
        try:
            yield processor
        finally:
            processor.image_processor, processor.tokenizer = inner, tokenizer
