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


def _run_bench(out_dir, **env_vars):
    env = dict(os.environ, DRY="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), **env_vars)
    return subprocess.run(
        [sys.executable, "bench/gpu_quant.py", "--out", str(out_dir), "--cases", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.e2e
def test_dry_run_of_the_quantisation_bench_measures_sft_and_ppo_and_writes_both_reports(tmp_path):
    out = _run_bench(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    report = json.loads((tmp_path / "quant.json").read_text())
    rows = report["rows"]
    assert [(r["case"], r["stage"]) for r in rows] == [("7b 4bit", "ppo"), ("7b 4bit", "sft")]
    # the 7B rows run the 24 GB preset's own settings (the DRY sizes replace them on the CPU)
    assert report["meta"]["settings"]["llava-next-mistral-7b"]["preset"] == "numberline-llava-4bit"
    for row in rows:
        assert row["status"] == "ok", row
        assert row["start_gib"] is None  # measured on a GPU only
        assert row["samples_per_s"] > 0 and row["estimate_gib"] > 0 and row["tokens_per_sample"] > 0
        assert row["note"].startswith("DRY: unquantised")
    assert all(r["env_steps_per_s"] > 0 for r in rows if r["stage"] == "ppo")
    assert report["meta"]["settings"]["dry"] is True
    table = (tmp_path / "quant.md").read_text()
    assert table.count("| 7b 4bit |") == 2 and "estimate / peak" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quant.json", "quant.md"]
    # one process per stage: two children, each reporting its own row
    assert out.stdout.count('"case": "7b 4bit"') == 2


def test_a_stage_whose_process_is_killed_gets_its_row_and_the_table_still_comes(tmp_path):
    # Each stage runs in its own process; one that overruns STAGE_TIMEOUT_S (or crashes, or runs out of
    # memory) ends with a row saying so, and the next stage still runs.
    out = _run_bench(tmp_path, STAGE_TIMEOUT_S="0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "quant.json").read_text())["rows"]
    assert [(r["case"], r["stage"], r["status"]) for r in rows] == [
        ("7b 4bit", "ppo", "timeout"),
        ("7b 4bit", "sft", "timeout"),
    ]
    assert all("killed after" in r["note"] and r["peak_gib"] is None for r in rows)
    table = (tmp_path / "quant.md").read_text()
    assert table.count("| timeout |") == 2


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


def test_a_measured_ppo_stage_leaves_no_model_alive(tmp_path):
    # The bench's rows are only comparable if a stage frees what it loaded: the static decoder (the GPU
    # default) once kept every model it sampled from alive, and each later row measured them all.
    import gc

    from transformers import PreTrainedModel

    from vlmppo.benchmark.fit import measure_stage
    from vlmppo.config import load_config

    def live_models() -> int:
        gc.collect()
        return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())

    before = live_models()
    cfg = load_config(
        "numberline-tiny",
        overrides=["model.decoder=static", "env.n_envs=2", "ppo.micro_batch_size=2", "ppo.minibatch_size=2",
                   "ppo.max_new_tokens=4", "ppo.init_from=null", "ppo.n_epochs=1"],
    )  # fmt: skip
    row = measure_stage("tiny", "ppo", cfg, "cpu", None, tmp_path)
    assert row.status == "ok" and row.decoder == "static", row
    assert live_models() == before
