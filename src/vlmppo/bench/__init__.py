"""``vlmppo bench``: rollout and update throughput and peak GPU memory of the PPO loop (DESIGN.md §10).

Modules: ``options`` (CLI values), ``timing`` (synchronised timers, peak
memory), ``rollout`` and ``update`` (the measurements), ``runner`` (``run_bench``), ``report`` (tables). The
model architectures it builds with random weights live in ``vlmppo.models.shapes``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BenchResult": "vlmppo.bench.runner",
    "run_bench": "vlmppo.bench.runner",
    "parse_n_envs": "vlmppo.bench.options",
    "write_report": "vlmppo.bench.report",
    "SHAPES": "vlmppo.models.shapes",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmppo.bench' has no attribute {name!r}")
