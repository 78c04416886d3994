"""One writer per run stage: a second process on the same stage of the same run fails at once with one line
naming the first (real processes, real locks); a killed holder leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import run_cli

from vlmppo.locks import lock_path, stage_lock

HOLD = """
import sys, time
from vlmppo.locks import stage_lock
with stage_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_lock(run_root: Path, stage: str) -> subprocess.Popen:
    """Another process that holds ``stage``'s lock of the run until it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_root), stage], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("stage", ["collect", "label", "preprocess", "sft", "ppo", "pipeline"])
def test_a_second_writer_of_a_stage_fails_naming_the_first(tmp_path, stage):
    holder = hold_lock(tmp_path / "numberline-tiny", stage)
    try:
        out = run_cli(stage, "--preset", "numberline-tiny", f"run.output_dir={tmp_path}")
    finally:
        holder.kill()
        holder.wait()
    assert out.returncode == 1
    assert f"Another vlmppo process is running {stage}" in out.stderr
    assert f"pid {holder.pid} on {socket.gethostname()}" in out.stderr
    assert "Traceback" not in out.stderr
    # It left nothing of its own behind: no config.yaml of a run that did not happen.
    assert not (tmp_path / "numberline-tiny/config.yaml").exists()


def test_a_running_collect_holds_its_lock_against_a_second_collect(tmp_path):
    args = ["collect", "--preset", "numberline-tiny", f"run.output_dir={tmp_path}", "collect.episodes=100000"]
    first = subprocess.Popen(
        [sys.executable, "-m", "vlmppo", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        episodes = tmp_path / "numberline-tiny/collect/episodes.jsonl"
        deadline = time.time() + 120
        while not (episodes.is_file() and episodes.stat().st_size) and time.time() < deadline:
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.2)
        second = run_cli(*args)
        holder = json.loads(lock_path(tmp_path / "numberline-tiny", "collect").read_text())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 1
    assert f"pid {first.pid}" in second.stderr and "vlmppo collect --preset numberline-tiny" in second.stderr
    assert holder["pid"] == first.pid and holder["command"].startswith("vlmppo collect")
    # Killed with SIGKILL, the first left its name in the file but no lock: the next collect runs.
    third = run_cli(*args[:-1], "collect.episodes=2")
    assert third.returncode == 0, third.stderr


def test_the_lock_is_reentrant_in_one_process_and_free_after(tmp_path):
    with stage_lock(tmp_path, "ppo"), stage_lock(tmp_path, "ppo"):
        pass
    holder = hold_lock(tmp_path, "ppo")  # another process can take it now
    holder.kill()
    holder.wait()
