"""bench/data_parallel.py (issue 20's figures) in its CPU mode: DRY=1 runs the same code path with the tiny
model on gloo ranks, so the script is known to work before it meets a 2-GPU machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.helpers import REPO


@pytest.mark.slow
def test_the_dry_mode_runs_every_part_and_writes_the_tables(tmp_path):
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "bench" / "data_parallel.py"), "--gpus", "2"], env=env,
                         capture_output=True, text=True, timeout=1800, cwd=REPO)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "data_parallel.json").read_text())
    ppo = {(r["launch"], r["gpus"]): r for r in results if r["stage"] == "ppo"}
    assert ppo[("single", 1)]["env_steps_per_s"] > 0 and ppo[("ddp", 2)]["env_steps_per_s"] > 0
    assert ppo[("ddp", 2)]["estimate_gb"] > 0 and "--nproc_per_node 2" in ppo[("ddp", 2)]["launched"]
    sft = {(r["launch"], r["gpus"]): r for r in results if r["stage"] == "sft"}
    assert sft[("single", 1)]["samples_per_s"] > 0 and sft[("ddp", 2)]["samples_per_s"] > 0
    for launch in ("zero2", "zero3"):  # DeepSpeed is an optional extra: skipped, said why
        assert "skipped" in sft[(launch, 2)] or sft[(launch, 2)]["samples_per_s"] > 0
    (resume,) = [r for r in results if r["stage"] == "ppo kill + resume"]
    assert resume["passed"] and resume["rows"] == [1, 2, 3, 4], resume
    assert "| ppo | ddp | 2 |" in (tmp_path / "data_parallel.md").read_text()
