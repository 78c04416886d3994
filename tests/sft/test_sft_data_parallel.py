"""`vlmppo sft --launch ddp --gpus 2` on CPU ranks: stopped by one rank's signal, resumed, the same run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import child_processes, run_cli
from tests.sft.helpers import write_color_dataset

pytestmark = pytest.mark.e2e  # launches processes (torchrun, two gloo ranks)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_a_two_rank_sft_run_stopped_by_a_signal_resumes_exactly(tmp_path):
    train, val = write_color_dataset(tmp_path, n_train=16, n_val=4)
    common = ["--preset", "probe-color-tiny", f"sft.train_file={train}", f"sft.val_file={val}", "sft.max_steps=30",
              "sft.batch_size=2", "sft.eval_every=1000", "sft.save_every=1000", "sft.warmup_ratio=0",
              "--launch", "ddp", "--gpus", "2"]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1"}
    straight = run_cli("sft", *common, f"run.output_dir={tmp_path / 'a'}", env=env, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "launching: ACCELERATE_USE_CPU=1" in straight.stdout

    split = tmp_path / "b" / "probe-color-tiny" / "sft"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "vlmppo", "sft", *common, f"run.output_dir={tmp_path / 'b'}"],
        env={**os.environ, **env, "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not rows(split / "metrics.jsonl") and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    ranks = child_processes(launcher.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGUSR1)  # rank 1 only: rank 0 learns of it and both save the same step
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr[-3000:]
    stopped = rows(split / "metrics.jsonl")[-1]["step"]
    assert "stopped on" in stdout and stopped < 30, stdout[-2000:]
    resumed = run_cli(
        "sft", *common, f"run.output_dir={tmp_path / 'b'}", "--resume", "auto", env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = [r for r in rows(tmp_path / "a" / "probe-color-tiny" / "sft" / "metrics.jsonl") if not r.get("final")]
    b = [r for r in rows(split / "metrics.jsonl") if not r.get("final")]
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 31))  # none lost, none twice
    for ra, rb in zip(a, b, strict=True):
        assert rb["samples"] == ra["samples"]
        assert abs(rb["sft/loss"] - ra["sft/loss"]) < 1e-5 * max(1.0, abs(ra["sft/loss"])), (
            ra["step"],
            ra,
            rb,
        )
