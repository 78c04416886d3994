"""bench/sft_throughput.py (where an SFT step's time goes, issue 23): DRY=1 measures every section on a CPU with a
tiny model, and the figures that do not depend on the machine hold: the vision tower's features are the same
before and after, and a step makes far fewer op calls after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.helpers import REPO

pytestmark = pytest.mark.e2e  # the bench in a subprocess: data through the CLI, a tiny SFT run


def test_dry_run_measures_every_section(tmp_path):
    env = dict(os.environ, DRY="1", STEPS="1", OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"),
               PYTHONPATH=str(REPO / "src"), VLMPPO_CACHE=os.environ.get("VLMPPO_CACHE", str(tmp_path / "cache")))  # fmt: skip
    done = subprocess.run([sys.executable, "bench/sft_throughput.py"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "sft-throughput.json").read_text())
    for section in ("collation", "loader", "model_step", "end_to_end", "ops"):
        assert isinstance(report[section], list) and report[section], (section, report[section])
    parts = {row["part"]: row["ms_per_sample"] for row in report["collation"]}
    assert parts["= after, later epochs: cache warm, + position ids"] < parts["= before: collator, no cache"]
    difference = [r for r in report["model_step"] if r["part"] == "vision features: max abs difference"]
    assert difference[0]["ms_per_step"] == 0.0
    ops = {row["version"]: row["aten_calls_per_step"] for row in report["ops"]}
    assert ops["after"] < 0.7 * ops["before"], ops
    assert "## End to end" in (tmp_path / "out" / "sft-throughput.md").read_text()
