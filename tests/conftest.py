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
