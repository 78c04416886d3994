"""bench/gpu_quant.py in its DRY mode (the GPU script's code path on the CPU with tiny models), and the
``VLMPPO_GPU_MEM_CAP_GB`` variable that emulates a small card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.helpers import REPO

from vlmppo.errors import ConfigError


@pytest.mark.e2e
def test_dry_run_of_the_quantisation_bench_measures_sft_and_ppo_and_writes_both_reports(tmp_path):
    env = dict(os.environ, DRY="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    out = subprocess.run(
        [sys.executable, "bench/gpu_quant.py", "--out", str(tmp_path), "--cases", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "quant.json").read_text())
    rows = report["rows"]
    assert [(r["case"], r["stage"]) for r in rows] == [("7b 4bit", "ppo"), ("7b 4bit", "sft")]
    for row in rows:
        assert row["status"] == "ok", row
        assert row["samples_per_s"] > 0 and row["estimate_gib"] > 0 and row["tokens_per_sample"] > 0
        assert row["note"].startswith("DRY: unquantised")
    assert all(r["env_steps_per_s"] > 0 for r in rows if r["stage"] == "ppo")
    assert report["meta"]["settings"]["dry"] is True
    table = (tmp_path / "quant.md").read_text()
    assert table.count("| 7b 4bit |") == 2 and "estimate / peak" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quant.json", "quant.md"]


@pytest.mark.parametrize("value", ["abc", "-3", "0"])
def test_a_bad_memory_cap_is_named(monkeypatch, value):
    from vlmppo.sysinfo import GPU_MEM_CAP_VAR, apply_gpu_memory_cap

    monkeypatch.setenv(GPU_MEM_CAP_VAR, value)
    with pytest.raises(ConfigError, match=GPU_MEM_CAP_VAR):
        apply_gpu_memory_cap()


def test_no_memory_cap_when_the_variable_is_unset(monkeypatch):
    from vlmppo.sysinfo import GPU_MEM_CAP_VAR, apply_gpu_memory_cap

    monkeypatch.delenv(GPU_MEM_CAP_VAR, raising=False)
    assert apply_gpu_memory_cap() is None
