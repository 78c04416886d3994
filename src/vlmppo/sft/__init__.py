"""Supervised fine-tuning: dataset + collator, the training loop, launch configs.

``from vlmppo.sft import train_sft`` is lazy: torch and accelerate load on first use.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("train_sft", "SftResult"):
        from vlmppo.sft import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'vlmppo.sft' has no attribute {name!r}")
