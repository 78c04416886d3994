"""bench/gpu_rollout_fast.py on the CPU with the tiny model (its DRY mode's arguments): every variant's row is
measured, and the changes it compares alter nothing beyond rounding."""

from __future__ import annotations

import json

import pytest
from tests.helpers import run_bench_script


@pytest.mark.e2e
def test_the_rollout_step_bench_measures_every_variant_and_reports_what_they_change(tmp_path):
    args = ["--shape", "tiny", "--preset", "numberline-tiny", "--device", "cpu", "--n-envs", "3",
            "--max-new-tokens", "6", "--lengths", "2-4", "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    run_bench_script("gpu_rollout_fast.py", *args)
    report = json.loads((tmp_path / "rollout_fast.json").read_text())
    rows = report["rows"]
    assert [(r["answers"], r["code"]) for r in rows] == [
        (answers, code)
        for answers in ("forced", "2-4")
        for code in ("before", "+vision cache", "+fused norms", "+fused rotary", "+shared prefill (inexact)")
    ]
    assert all("error" not in r and r["env-steps/s"] > 0 and r["ms/decode step"] > 0 for r in rows)
    assert rows[0]["frames computed/cached"] == "0/0" and rows[1]["frames computed/cached"] != "0/0"
    assert (
        rows[3]["of which prefill s"] == 0 and rows[4]["of which prefill s"] > 0
    )  # only the opt-in shares it
    diff = report["differences"]
    assert diff["features identical"] is True
    assert diff["token log-prob max |diff| (prefill cache vs full)"] < 1e-4
    for decode in ("stock", "fused"):  # fp32: the sampled distribution is the scored one
        assert float(diff[f"sampling vs scoring |diff| mean/max ({decode} decode)"].split("/")[1]) < 1e-4
    assert "| +shared prefill (inexact) |" in (tmp_path / "rollout_fast.md").read_text()
