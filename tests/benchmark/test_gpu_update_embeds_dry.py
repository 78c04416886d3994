"""bench/gpu_update_embeds.py on the CPU with the tiny model: both update paths are measured, alternated, and
score the same answers alike; --profile splits one pass into its phases."""

from __future__ import annotations

import json

import pytest
from tests.helpers import run_bench_script


@pytest.mark.e2e
def test_the_update_ab_measures_both_paths_alternately_and_they_agree(tmp_path):
    args = ["--shape", "tiny", "--preset", "numberline-tiny", "--device", "cpu", "--n-envs", "3",
            "--max-new-tokens", "6", "--repeats", "1", "--profile", "--cast-ab", "--micro-batches", "2,3",
            "--out", str(tmp_path)]  # fmt: skip
    run_bench_script("gpu_update_embeds.py", *args)
    report = json.loads((tmp_path / "update_embeds.json").read_text())
    assert report["embeddings constant"] is True and report["recorded steps"] == 2
    assert [r["from embeddings"] for r in report["rows"]] == [False, True, False, True]
    assert all(r["tokens/s"] > 0 and r["samples/s"] > 0 for r in report["rows"])
    assert report["max |log-prob on - off|"] < 1e-4
    # --cast-ab alternates the adapters' input casts, --micro-batches sizes the default update
    assert [r["casts skipped"] for r in report["cast rows"]] == [False, True, False, True]
    assert [r["micro-batch"] for r in report["micro-batch rows"]] == [2, 3]
    assert all(r["tokens/s"] > 0 for r in report["cast rows"] + report["micro-batch rows"])
    assert "all kernels: " in (tmp_path / "update-profile.txt").read_text()
    # --profile: each phase of the update is a range of the profile, with its calls counted
    profile = (tmp_path / "update-profile.txt").read_text()
    for phase in ("collate", "forward", "backward", "optimizer step"):
        line = next(x for x in profile.splitlines() if x.startswith(f"{phase}: "))
        assert int(line.rsplit(", ", 1)[1].split()[0]) >= 1 and " 0.0 ms cpu" not in line
