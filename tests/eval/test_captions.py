"""Captioned trajectories and the compare table, without a model: synthetic frames and metrics files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmppo.envs.drawing import font
from vlmppo.envs.drawing import wrap_text as wrap
from vlmppo.errors import DataError
from vlmppo.eval.captions import BORDER, GREEN, MAX_PANELS, RED, TEXT, write_trajectory
from vlmppo.eval.compare import compare_rows


def episode(steps: int, success: bool):
    frames = [np.full((48, 48, 3), 10 * (i % 20), dtype=np.uint8) for i in range(steps + 1)]
    rows = [
        {"action": "move forward", "invalid": i % 2 == 0, "reward": 0.0, "value": 0.5,
         "thoughts": None, "answer": "x" * 400 if i == 0 else "go", "step": i}
        for i in range(steps)
    ]  # fmt: skip
    return frames, rows, {"return": 1.0 if success else 0.0, "length": steps, "success": success, "seed": 3}


@pytest.mark.parametrize(("steps", "success"), [(1, True), (35, False)])
def test_gif_has_one_frame_per_observation_and_the_outcome_border(tmp_path, steps, success):
    t = write_trajectory(tmp_path / "trajectories", "episode-000", *episode(steps, success))
    gif = Image.open(tmp_path / t.gif)
    assert gif.n_frames == steps + 1 == t.frames
    for k in (0, gif.n_frames - 1):
        gif.seek(k)
        corner = gif.convert("RGB").getpixel((BORDER // 2, BORDER // 2))
        assert np.abs(np.subtract(corner, GREEN if success else RED)).max() <= 8
    strip = Image.open(tmp_path / t.png)
    panels = min(steps + 1, MAX_PANELS)
    columns = min(5, panels)
    panel_w, panel_h = gif.size
    assert strip.size == (columns * panel_w, 34 + -(-panels // columns) * panel_h)


def test_frame_count_must_be_steps_plus_one(tmp_path):
    frames, rows, ep = episode(3, True)
    with pytest.raises(ValueError, match="expected 4 frames"):
        write_trajectory(tmp_path, "bad", frames[:-1], rows, ep)


def test_wrap_keeps_every_line_inside_the_width_even_for_one_long_word():
    text = "thoughts: " + "a" * 300 + " then a few short words"
    lines = wrap(text, TEXT, 200)
    assert len(lines) > 3 and "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(font(TEXT).getlength(line) <= 200 for line in lines)


def test_compare_reads_each_eval_and_rejects_a_file_that_is_not_one(tmp_path):
    good = tmp_path / "a"
    good.mkdir()
    metrics = {"env_id": "probe/Color-v0", "policy": "random", "decoding": None, "episodes": 10,
               "success_rate": 0.4, "success_ci95": [0.17, 0.69], "return_mean": 0.4, "return_median": 0.0,
               "length_mean": 1.0, "invalid_action_rate": 0.0, "tokens_per_answer": None,
               "env_steps_per_s": 100.0}  # fmt: skip
    (good / "metrics.json").write_text(json.dumps(metrics))
    headers, rows = compare_rows([good])
    assert headers == ["metric", "a"]
    assert dict((r[0], r[1]) for r in rows)["95% CI"] == "17.0% - 69.0%"
    other = tmp_path / "b"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(DataError, match="is not a vlmppo eval metrics.json"):
        compare_rows([good, other])
