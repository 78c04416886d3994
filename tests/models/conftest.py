"""Fixtures for the model tests: tiny models built once per session into a private temp cache."""

from __future__ import annotations

import json
import os

import pytest

from vlmppo.models import FAMILIES

BUILD_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run ~20x faster on one thread when the 2 CPU cores are shared (thread pools stall)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """A fresh ``VLMPPO_CACHE`` for these tests (restored afterwards)."""
    previous = os.environ.get("VLMPPO_CACHE")
    path = tmp_path_factory.mktemp("models-cache")
    os.environ["VLMPPO_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("VLMPPO_CACHE", None)
    else:
        os.environ["VLMPPO_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_dirs(tiny_cache):
    """``family -> folder`` of the cached tiny model; each is built on first request and timed."""
    from vlmppo.models import resolve_model_path

    class _Dirs(dict):
        def __missing__(self, family):
            self[family] = path = resolve_model_path(f"tiny:{family}")
            BUILD_SECONDS[family] = json.loads((path / "vlmppo-tiny-complete.json").read_text())[
                "build_seconds"
            ]
            return path

    return _Dirs()


@pytest.fixture(scope="session")
def frozen_models(tiny_dirs):
    """``family -> LoadedModel`` without LoRA, frozen, shared by the read-only tests."""
    from vlmppo.config.schema import ModelConfig
    from vlmppo.models import load_model

    class _Models(dict):
        def __missing__(self, family):
            cfg = ModelConfig(family=family, path=str(tiny_dirs[family]), lora=None)
            self[family] = load_model(cfg, for_training=False)
            return self[family]

    return _Models()


@pytest.fixture(params=list(FAMILIES))
def family(request) -> str:
    return request.param


def pytest_terminal_summary(terminalreporter):
    if BUILD_SECONDS:
        times = ", ".join(f"{family} {seconds:.2f} s" for family, seconds in BUILD_SECONDS.items())
        terminalreporter.write_line(f"tiny model build times: {times}")
