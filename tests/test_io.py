"""Atomic file writes: complete or absent, and readable like any file the user's umask allows."""

from __future__ import annotations

import json
import os
import stat

import pytest

from vlmppo.io import JsonlWriter, atomic_write_json, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "hello\n")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "report.md").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"b": 2})
    assert target.read_text() == '{\n  "b": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_appending_after_a_torn_last_line_cuts_it_first(tmp_path):
    # What a power cut mid-write leaves: a line without its end. Appending to it would glue the next
    # line onto it and make both unreadable.
    path = tmp_path / "samples.jsonl"
    path.write_text('{"update": 1}\n{"update": 2, "te')
    with JsonlWriter(path) as writer:
        writer.write_many([{"update": 2}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"update": 1}, {"update": 2}]
