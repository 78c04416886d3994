"""bench/gpu_scoring_gap.py on the CPU with the tiny model: in fp32 every scoring path gives the update's
log-probs (what the GPU run compares under bf16), and a path that did not would show in its figures."""

from __future__ import annotations

import json

import pytest
from tests.helpers import run_bench_script


@pytest.mark.e2e
def test_the_scoring_gap_bench_compares_every_path_with_the_updates_pass(tmp_path):
    args = ["--shape", "tiny", "--preset", "numberline-tiny", "--device", "cpu", "--n-envs", "3,5",
            "--max-new-tokens", "6", "--lengths", "2-4", "--out", str(tmp_path)]  # fmt: skip
    run_bench_script("gpu_scoring_gap.py", *args)
    report = json.loads((tmp_path / "scoring_gap.json").read_text())
    first, last = report["rows"]
    assert (first["n_envs"], last["n_envs"]) == (3, 5) and first["answer tokens"] >= 3 * 2
    assert "update fp32" not in " ".join(first) and "embeds vs update fp32" in last  # fp32 on the last only
    for row in (first, last):
        pairs = {k: v for k, v in row.items() if " vs " in k}
        assert len(pairs) >= 4
        for name, gap in pairs.items():
            assert float(gap["token max"]) < 1e-4 and float(gap["ratio outside clip"]) == 0.0, name
