"""The engine of ``vlmppo bench``: rollout and update throughput and peak GPU memory of the PPO loop
(DESIGN.md §10). The repository's ``bench/`` folder holds the scripts and the results measured with it.

Modules: ``options`` (CLI values), ``timing`` (synchronised timers, peak
memory), ``rollout`` and ``update`` (the measurements), ``runner`` (``run_bench``), ``report`` (table rows,
markdown and JSON files). The model architectures it builds with random weights live in
``vlmppo.models.shapes``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BenchResult": "vlmppo.benchmark.runner",
    "run_bench": "vlmppo.benchmark.runner",
    "parse_n_envs": "vlmppo.benchmark.options",
    "write_report": "vlmppo.benchmark.report",
    "SHAPES": "vlmppo.models.shapes",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlmppo.benchmark' has no attribute {name!r}")
