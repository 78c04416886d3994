"""Hub ids in model.path: the local Hugging Face cache first; when the hub cannot serve, one clear error at once.

The machine running the tests has no network (pip's index aside), and the tests must not need one: each runs
vlmppo in a subprocess with its own empty (or hand-built) HF_HUB_CACHE, since huggingface_hub reads its
environment once, at import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests.helpers import run_cli

from vlmppo.models import resolve_model_path
from vlmppo.models.hub import PROBE_TIMEOUT_S

MISSING = "vlmppo-tests/no-such-model"  # no network here; with one, the hub says it does not exist


def python(code: str, hub_cache, *, offline: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_CACHE"] = str(hub_cache)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


LOCATE = f"""
import time
from vlmppo.errors import ModelError
from vlmppo.models.hub import locate_hub_model
start = time.perf_counter()
try:
    locate_hub_model({MISSING!r})
except ModelError as exc:
    print(exc)
print("seconds", time.perf_counter() - start)
"""


def test_an_uncached_hub_id_without_network_fails_within_seconds_naming_it(tmp_path):
    for offline in (True, False):
        out = python(LOCATE, tmp_path / "empty-cache", offline=offline)
        assert out.returncode == 0, out.stderr
        text = " ".join(out.stdout.split())
        seconds = float(text.rsplit("seconds", 1)[1])
        # before: five retries with backoff, ~25 s, when not offline
        assert seconds < PROBE_TIMEOUT_S + 2, (offline, seconds)
        assert f"model.path '{MISSING}'" in text and f"hf download {MISSING}" in text, text
        assert "HF_HUB_OFFLINE=1" in text if offline else "cannot be reached" in text or "neither" in text


def test_the_cli_says_it_in_one_paragraph_without_retry_messages(tmp_path):
    out = run_cli("model", "info", MISSING, env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert out.returncode == 1
    assert MISSING in out.stderr and "hf download" in out.stderr
    assert "Traceback" not in out.stderr and "Retrying" not in out.stderr


def test_a_hub_id_in_the_local_cache_loads_from_it_without_network(tmp_path):
    """A hand-built cache entry (refs/main -> snapshots/<commit>/) holding the tiny Qwen2-VL's files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--vlmppo-tests--tiny-qwen2-vl"
    shutil.copytree(resolve_model_path("tiny:qwen2-vl"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = """
from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
loaded = load_model(ModelConfig(path="vlmppo-tests/tiny-qwen2-vl", lora=None), for_training=False)
print(loaded.path, loaded.family.name, type(loaded.model).__name__)
"""
    out = python(code, tmp_path / "hub", offline=False)  # not offline, but no network to reach
    assert out.returncode == 0, out.stderr
    # LoadedModel.path keeps the id: checkpoints record the base model by it, not by a cache folder
    assert out.stdout.split()[:2] == ["vlmppo-tests/tiny-qwen2-vl", "qwen2-vl"], out.stdout
