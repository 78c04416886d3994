"""bench/gpu_ppo.sh (the loop against the rollout bench, issue 18): its report's arithmetic on written files,
and its DRY mode (the GPU script's code path on the CPU with the tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.helpers import REPO

LOOP = ["--preset", "numberline-tiny", "env.n_envs=4", "ppo.max_new_tokens=8", "run.device=cpu"]


def _report_module():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import ppo_loop_report
    finally:
        sys.path.remove(str(REPO / "bench"))
    return ppo_loop_report


def test_the_report_sets_the_loops_steady_rate_beside_the_benchs_and_the_estimate_beside_the_peaks(tmp_path):
    report = _report_module()
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"env_steps_per_s": 20.0}))
    rows = [
        {"update": 1, "time/env_steps_per_s": 10.0, "time/steady_env_steps_per_s": 16.0,
         "sys/gpu_mem_peak_gb": 20.0, "sys/gpu_mem_peak_rollout_gb": 12.0, "sys/gpu_mem_peak_update_gb": 20.0},
        {"update": 2, "time/env_steps_per_s": 18.0, "time/steady_env_steps_per_s": 18.0,
         "sys/gpu_mem_peak_gb": 21.0, "sys/gpu_mem_peak_rollout_gb": 13.0, "sys/gpu_mem_peak_update_gb": 21.0},
    ]  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    text, summary = report.report(LOOP, bench, metrics)
    assert summary["n_envs"] == 4
    assert summary["loop_steady_env_steps_per_s"] == pytest.approx(17.0)
    assert summary["loop_over_bench"] == pytest.approx(17.0 / 20.0)
    assert summary["peak_gib"] == 21.0 and summary["peak_rollout_gib"] == 13.0
    assert summary["estimate_over_peak"] == pytest.approx(summary["estimate_gib"] / 21.0)
    assert "| 2 | 18 | 18 |" in text
    (tmp_path / "s.json").write_text(json.dumps(summary))
    table = report.summary_table([tmp_path / "s.json"])
    assert table.splitlines()[2].startswith("| 4 | 20 | 17 | 0.85 | 10, 18 |")


@pytest.mark.e2e
@pytest.mark.slow
def test_dry_mode_runs_the_bench_the_loop_with_a_resume_and_the_report(tmp_path):
    env = dict(os.environ, DRY="1", OUT=str(tmp_path), N_ENVS="2", NEW="4", PYTHON=sys.executable,
               OMP_NUM_THREADS="1", RESUME="1")  # fmt: skip
    out = subprocess.run(
        ["bash", "bench/gpu_ppo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    summary = json.loads((tmp_path / "ppo-2.json").read_text())
    assert summary["bench_env_steps_per_s"] > 0 and summary["loop_steady_env_steps_per_s"] > 0
    assert len(summary["loop_whole_env_steps_per_s"]) == 3  # two updates, then one after --resume auto
    assert summary["estimate_gib"] > 0 and summary["peak_gib"] is None  # no GPU memory on the CPU
    assert (tmp_path / "ppo-loop.md").read_text().startswith("| n_envs |")
