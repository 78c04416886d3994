"""Vision-language models: family adapters, tiny random models, loading with LoRA, and model inputs.

``import vlmppo.models`` is light (no torch/transformers); the heavy modules load on first use of a
function below.
"""

from __future__ import annotations

import importlib

from vlmppo.models.adapter import FamilyAdapter
from vlmppo.models.families import FAMILIES, register_family

_LAZY = {
    "LoadedModel": "vlmppo.models.loading",
    "load_model": "vlmppo.models.loading",
    "build_inputs": "vlmppo.models.inputs",
    "chat_prompt": "vlmppo.models.inputs",
    "build_tiny_model": "vlmppo.models.tiny",
    "resolve_model_path": "vlmppo.models.tiny",
    "model_info": "vlmppo.models.info",
}

__all__ = ["FAMILIES", "FamilyAdapter", "register_family", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmppo.models' has no attribute {name!r}")
