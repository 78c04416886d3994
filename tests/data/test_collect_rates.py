"""collect's success (return > 0) and solved rates, also over episodes kept from an interrupted run."""

from __future__ import annotations

import json

from vlmppo.config import load_config
from vlmppo.data.collect import collect


def test_resumed_episodes_count_by_their_final_state(tmp_path):
    overrides = [f"run.output_dir={tmp_path}", "collect.episodes=3"]
    first = collect(load_config("numberline-tiny", overrides=overrides))
    assert (first.success_rate, first.solved_rate) == (1.0, 1.0)  # the expert walks straight to the target
    resumed = collect(load_config("numberline-tiny", overrides=[*overrides, "collect.episodes=5"]))
    assert resumed.resumed == 3 and (resumed.success_rate, resumed.solved_rate) == (1.0, 1.0)
    manifest = json.loads((resumed.out_dir / "manifest.json").read_text())
    assert (manifest["success_rate"], manifest["solved_rate"]) == (1.0, 1.0)
