"""`collect --policy checkpoint`: a VLM (a PEFT adapter on a tiny model) acts in all envs at once."""

from __future__ import annotations

import json

import pytest
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e  # collect with a tiny VLM acting


def test_collect_with_a_peft_adapter_checkpoint_records_raw_answers(tmp_path):
    from vlmppo.config import load_config
    from vlmppo.models import load_model

    cfg = load_config("probe-color-tiny")
    loaded = load_model(cfg.model, for_training=True)
    adapter_dir = tmp_path / "adapter"
    loaded.model.save_pretrained(adapter_dir)
    common = ["--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", "run.name=run"]
    out = run_cli(
        "collect",
        *common,
        "--policy",
        "checkpoint",
        "--ckpt",
        str(adapter_dir),
        "collect.episodes=5",
        "collect.max_new_tokens=8",
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "run/collect/episodes.jsonl").read_text().splitlines()]
    assert len(rows) == 5  # one step per Color episode
    for row in rows:
        assert isinstance(row["answer"], str)
        assert row["action_text"] in ("left", "right")
        assert row["invalid"] is True  # a random model writes no JSON: a random legal action, flagged


def test_collect_with_a_missing_checkpoint_is_a_clear_error(tmp_path):
    out = run_cli(
        "collect",
        "--preset",
        "probe-color-tiny",
        f"run.output_dir={tmp_path}",
        "--policy",
        "checkpoint",
        "--ckpt",
        str(tmp_path / "nope"),
    )
    assert out.returncode == 1 and "does not exist" in out.stderr and "Traceback" not in out.stderr
