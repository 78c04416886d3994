"""Image features computed once per distinct frame while the weights stay the same (a rollout).

A rollout step sends every env's frame through the vision tower (0.31 s of a 2.1 s step for 128 NumberLine
envs on the Qwen2-VL-2B shape), yet its envs show few distinct frames (NumberLine has 30; a MiniGrid room or
a Blackjack table repeats too), and between two updates the tower's weights do not move. ``image_features``
runs the tower only on the frames of a batch it has not seen since the weights last changed, and takes the
others' features from a cache kept on the backbone module (it goes away with the model).

Exactness: a frame is recognised by its processed pixels (and grid/size), compared in full (``torch.equal``)
with the cached frame's; a cheap fingerprint (the pixels times a fixed random vector) only proposes which
cached frame to compare with. A frame's features are what the tower computes for that frame alone (each
image attends to itself only), so reusing them changes nothing but which batch they were computed in.

What clears the cache: ``clear`` (``ActorCritic.weights_changed``, after every update), and any change of
the feature modules' parameters it can see (a new tensor, an in-place update that bumps the tensor's
version; a fused optimizer's does not, hence ``clear``), of the autocast dtype or of the grad mode. Models
whose image-feature modules carry a PEFT adapter (LoRA layers, ``modules_to_save``) are never cached: with
the adapter disabled the same weights compute other features.
"""

from __future__ import annotations

import torch

from vlmppo.models.frame_cache import DEFAULT_MAX_BYTES, FrameCache

PIXEL_KEYS = ("image_grid_thw", "image_sizes")  # what get_image_features needs besides pixel_values
_ATTRIBUTE = "_vlmppo_feature_cache"
_ADAPTED = ("lora_", "modules_to_save", "original_module")  # parameter names of a PEFT-wrapped module


class FeatureCache(FrameCache):
    """Per-frame image features of one backbone (see the module docstring), in the rollout's byte-bounded LRU
    (``models.frame_cache.FrameCache``; 256 MiB: ~95 Qwen2-VL-2B frames, pixels 2.3 MB + features 0.4 MB each).

    Attributes:
        entries: ``(shape, grid/size, fingerprint)`` -> ``{"pixels", "features"}``; a frame whose fingerprint
            collides with a cached other frame's is computed each time, never served the other's features.
        hits / misses: Frames served from the cache / computed, since creation.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(max_bytes)
        self.signature: tuple | None = None
        self.weights: dict[tuple, torch.Tensor] = {}  # fingerprint vectors by (numel, device)

    def find(self, key: tuple, pixels: torch.Tensor) -> torch.Tensor | None:
        entry = self.get(key)
        return entry["features"] if entry is not None and torch.equal(entry["pixels"], pixels) else None

    def keep(self, key: tuple, pixels: torch.Tensor, features: torch.Tensor) -> None:
        # Copies: views would keep a whole batch's pixels and features alive.
        self.put(key, {"pixels": pixels.clone(), "features": features.clone()})

    def fingerprints(self, images: list[torch.Tensor]) -> list[float]:
        """A float per image: equal pixels give equal floats (different pixels almost never do). Each image
        is reduced on its own, so its float does not depend on the batch around it (a matrix-vector product
        over the batch gives identical rows different roundings)."""
        prints = []
        for image in images:
            flat = image.reshape(-1)
            key = (flat.shape[0], str(flat.device))
            if key not in self.weights:
                generator = torch.Generator().manual_seed(flat.shape[0])
                self.weights[key] = torch.rand(flat.shape[0], generator=generator).to(flat.device)
            prints.append((flat.float() * self.weights[key]).sum())
        return torch.stack(prints).tolist() if prints else []  # the one host sync


def feature_modules_signature(backbone, device_type: str) -> tuple | None:
    """The identity and version of every image-feature parameter (everything outside the language model)
    and the autocast dtype on ``device_type``; None when a PEFT adapter wraps one of those modules."""
    named = list(backbone.named_parameters(recurse=False))
    for child_name, child in backbone.named_children():
        if child_name != "language_model":
            named += child.named_parameters()
    parts = []
    for name, param in named:
        if any(marker in name for marker in _ADAPTED):
            return None
        parts.append((id(param), param.data_ptr(), param._version))
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return (tuple(parts), autocast)


_max_bytes = DEFAULT_MAX_BYTES


def set_max_bytes(max_bytes: int) -> None:
    """Bound the caches made from now on (0: no caching; the benchmark's "before")."""
    global _max_bytes
    _max_bytes = max_bytes


def cache_of(backbone) -> FeatureCache:
    cache = backbone.__dict__.get(_ATTRIBUTE)
    if cache is None:
        cache = backbone.__dict__[_ATTRIBUTE] = FeatureCache(_max_bytes)
    return cache


def clear_feature_cache(model) -> None:
    """Forget the cached features of ``model`` (a backbone, a ``*ForConditionalGeneration`` or a PEFT
    model): its image-feature weights are about to change or have changed."""
    for module in model.modules():
        cache = module.__dict__.get(_ATTRIBUTE)
        if cache is not None:
            cache.clear()


def split_images(batch) -> list[tuple[torch.Tensor, dict]] | None:
    """Each image's ``(pixels, {grid/size key: [1, ...]})`` of a batch's pixel inputs, such that
    concatenating them gives the batch's back; None for a layout this does not know."""
    pixels = batch["pixel_values"]
    if "image_grid_thw" in batch:  # Qwen: t*h*w patch rows per image
        grid = batch["image_grid_thw"]
        rows = grid.prod(dim=-1).tolist()
        if sum(rows) != pixels.shape[0]:
            return None
        pieces = torch.split(pixels, rows)
        return [(piece, {"image_grid_thw": grid[i : i + 1]}) for i, piece in enumerate(pieces)]
    sizes = batch.get("image_sizes")
    if sizes is not None and sizes.shape[0] != pixels.shape[0]:
        return None
    return [
        (pixels[i : i + 1], {"image_sizes": sizes[i : i + 1]} if sizes is not None else {})
        for i in range(pixels.shape[0])
    ]


def compute_features(backbone, pixels: torch.Tensor, extra: dict) -> list[torch.Tensor]:
    """The tower's per-image features of a pixel batch (a list, one ``[tokens, H]`` tensor per image)."""
    out = backbone.get_image_features(pixel_values=pixels, **extra, return_dict=True)
    return list(out.pooler_output)


def image_features(backbone, batch, cache: FeatureCache | None = None) -> torch.Tensor:
    """``torch.cat`` of the per-image features of ``batch``'s frames, as ``compute_features`` over the whole
    batch gives them, with each distinct frame computed at most once while the weights stay the same."""
    pixels = batch["pixel_values"]
    extra = {k: batch[k] for k in PIXEL_KEYS if k in batch}
    cache = cache_of(backbone) if cache is None else cache
    enabled = cache.max_bytes > 0 and _max_bytes > 0 and not torch.is_grad_enabled()
    images = split_images(batch) if enabled else None
    signature = feature_modules_signature(backbone, pixels.device.type) if images else None
    if signature is None:
        return torch.cat(compute_features(backbone, pixels, extra), dim=0)
    if signature != cache.signature:
        cache.clear()
        cache.signature = signature
    keys = _image_keys(cache, images, extra)
    found: list = [cache.find(key, image) for key, (image, _) in zip(keys, images, strict=True)]
    # Each frame the cache lacks is computed once: the first of its copies in this batch stands for all.
    source: dict[int, int] = {}
    computed_by_key: dict[tuple, list[int]] = {}
    for i, (key, (image, _)) in enumerate(zip(keys, images, strict=True)):
        if found[i] is None:
            earlier = computed_by_key.setdefault(key, [])
            source[i] = next((j for j in earlier if torch.equal(images[j][0], image)), i)
            if source[i] == i:
                earlier.append(i)
    todo = sorted(set(source.values()))
    cache.hits += len(images) - len(todo)
    cache.misses += len(todo)
    if todo:
        computed = compute_features(
            backbone,
            torch.cat([images[j][0] for j in todo]),
            {k: torch.cat([images[j][1][k] for j in todo]) for k in extra},
        )
        if len(computed) != len(todo):  # not one feature tensor per image: no caching
            return torch.cat(compute_features(backbone, pixels, extra), dim=0)
        for j, features in zip(todo, computed, strict=True):
            found[j] = features
            cache.keep(keys[j], images[j][0], features)
        for i, j in source.items():
            found[i] = found[j]
    return torch.cat(found, dim=0)


def _image_keys(cache: FeatureCache, images, extra: dict) -> list[tuple]:
    """Per image: its pixel shape, its grid/size values and its pixels' fingerprint."""
    values = {k: v.tolist() for k, v in extra.items()}  # one host copy each, not one per image
    prints = cache.fingerprints([image for image, _ in images])
    return [
        (tuple(image.shape), tuple(repr(values[k][i]) for k in sorted(values)), prints[i])
        for i, (image, _) in enumerate(images)
    ]
