"""Shared test setup: a private tiny-model cache and run folder per session, never the user's home."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tiny models are built once per test session into a temp cache (tests never touch ~/.cache)."""
    if "VLMPPO_CACHE" not in os.environ:
        os.environ["VLMPPO_CACHE"] = str(tmp_path_factory.mktemp("vlmppo-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    yield


# The contributor loop, `pytest -m quick`: every test not in a slower tier. A test that runs the CLI in a
# subprocess or trains for more than a few seconds gets `@pytest.mark.e2e` and leaves the loop.
SLOWER_TIERS = ("slow", "gpu", "slurm", "e2e")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in SLOWER_TIERS):
            item.add_marker(pytest.mark.quick)


# Two shared cores: torch's default thread pools stall tiny models 40-100x; one thread each is fastest.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency
    pass
