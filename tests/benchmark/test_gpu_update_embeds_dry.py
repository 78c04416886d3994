"""bench/gpu_update_embeds.py on the CPU with the tiny model: both update paths are measured, alternated, and
score the same answers alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.helpers import REPO


@pytest.mark.e2e
def test_the_update_ab_measures_both_paths_alternately_and_they_agree(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    args = ["--shape", "tiny", "--preset", "numberline-tiny", "--device", "cpu", "--n-envs", "3",
            "--max-new-tokens", "6", "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    out = subprocess.run([sys.executable, "bench/gpu_update_embeds.py", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    report = json.loads((tmp_path / "update_embeds.json").read_text())
    assert report["embeddings constant"] is True and report["recorded steps"] == 2
    assert [r["from embeddings"] for r in report["rows"]] == [False, True, False, True]
    assert all(r["tokens/s"] > 0 and r["samples/s"] > 0 for r in report["rows"])
    assert report["max |log-prob on - off|"] < 1e-4
