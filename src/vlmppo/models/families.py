"""The registry of model families: one adapter each (see `vlmppo.models.adapter.FamilyAdapter`).

A new family is one adapter instance passed to `register_family`, under a name of
``vlmppo.registry.FAMILIES`` (the list ``model.family`` is validated against); nothing else in vlmppo
branches on family names.
"""

from __future__ import annotations

from vlmppo.models.adapter import FamilyAdapter
from vlmppo.models.llava import LLAVA, LLAVA_NEXT
from vlmppo.models.qwen import QWEN2_5_VL, QWEN2_VL

FAMILIES: dict[str, FamilyAdapter] = {}


def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    """Add `adapter` to `FAMILIES` (its name and ``model_type`` must be new)."""
    if adapter.name in FAMILIES or family_for_model_type(adapter.model_type) is not None:
        raise ValueError(f"model family {adapter.name!r} ({adapter.model_type}) is already registered")
    FAMILIES[adapter.name] = adapter
    return adapter


def family_for_model_type(model_type: str | None) -> FamilyAdapter | None:
    """The registered adapter whose checkpoints have this ``config.json`` ``model_type``, or None."""
    return next((a for a in FAMILIES.values() if a.model_type == model_type), None)


for _adapter in (QWEN2_VL, QWEN2_5_VL, LLAVA, LLAVA_NEXT):
    register_family(_adapter)
