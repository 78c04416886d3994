"""A full disk: the message names the file, and no JSONL file is left with half a line.

A real write failure without filling the machine's disk: the process may write no file over a few KiB
(RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails with EFBIG the way a full disk fails with ENOSPC).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

LIMIT = 20_000  # bytes a file may reach


def small_files_only():
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))


def run_limited(args: list[str], cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
        preexec_fn=small_files_only, timeout=300,
    )  # fmt: skip


def whole_lines(path) -> list[dict]:
    data = path.read_text(encoding="utf-8")
    assert data.endswith("\n"), f"{path} ends in half a line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


WRITE_ROWS = """
import sys
from vlmppo.io import JsonlWriter
with JsonlWriter(sys.argv[1]) as writer:
    for i in range(10_000):
        writer.write_many([{"i": i, "text": "x" * 300}, {"i": i, "text": "y" * 300}])
"""


def test_a_jsonl_writer_on_a_full_disk_names_the_file_and_keeps_whole_lines(tmp_path):
    path = tmp_path / "samples.jsonl"
    out = run_limited(["-c", WRITE_ROWS, str(path)])
    assert out.returncode == 1
    assert f"Could not write {path}: File too large" in out.stderr and "ulimit -f" in out.stderr
    rows = whole_lines(path)
    assert rows and len(rows) % 2 == 0  # whole batches only


WRITE_TEXT = """
import sys
from vlmppo.io import atomic_write_text
atomic_write_text(sys.argv[1], "z" * 100_000)
"""


def test_an_atomic_write_on_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old\n")
    out = run_limited(["-c", WRITE_TEXT, str(path)])
    assert out.returncode == 1 and f"Could not write {path}: File too large" in out.stderr
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_collect_on_a_full_disk_is_one_paragraph_naming_the_file_and_leaves_whole_lines(tmp_path):
    out = run_limited(
        ["-m", "vlmppo", "collect", "--preset", "numberline-tiny", f"run.output_dir={tmp_path}",
         "collect.episodes=400"],
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    collect = tmp_path / "numberline-tiny/collect"
    assert f"Could not write {collect}" in out.stderr and "Traceback" not in out.stderr
    rows = whole_lines(collect / "episodes.jsonl")
    assert rows[-1]["terminated"] or rows[-1]["truncated"]  # whole episodes, too
