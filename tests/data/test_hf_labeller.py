"""The hf labeller runs a local VLM (here a tiny random Qwen2-VL, loaded like a real checkpoint)."""

from __future__ import annotations

import json

import pytest
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e  # a tiny VLM labels a collected run


def test_hf_labeller_labels_every_step_and_keeps_unparseable_answers(tmp_path):
    common = ["--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "run.name=run"]
    assert run_cli("collect", *common, "collect.episodes=2").returncode == 0
    out = run_cli(
        "label",
        *common,
        "--labeller",
        "hf",
        "label.model=tiny:qwen2-vl",
        "label.max_new_tokens=12",
        "label.batch_size=3",
    )
    assert out.returncode == 0, out.stderr
    steps = (tmp_path / "run/collect/episodes.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in (tmp_path / "run/label/labels.jsonl").read_text().splitlines()]
    assert len(rows) == len(steps) and len({r["key"] for r in rows}) == len(steps)
    for row in rows:
        assert row["labeller"] == "hf" and isinstance(row["raw"], str)
        assert row["status"] in ("ok", "parse_error")
        # a random model writes no valid JSON answer: kept as parse_error, never a crash
        assert (row["action"] is None) == (row["status"] == "parse_error")
    manifest = json.loads((tmp_path / "run/label/manifest.json").read_text())
    assert manifest["counts"]["steps"] == len(steps)
    assert manifest["generation"] == "explicit"  # not the tiny model's hostile generation_config.json
