"""`vlmppo ppo --launch ddp --gpus 2` on a machine without GPUs: two CPU ranks on gloo, stopped by a signal to
one rank, resumed with --resume auto."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import child_processes, run_cli

pytestmark = pytest.mark.e2e  # launches processes (torchrun, two gloo ranks)

SMALL = [
    "env.n_envs=2",
    "ppo.n_steps=4",
    "ppo.minibatch_size=4",
    "ppo.micro_batch_size=2",
    "ppo.n_epochs=1",
    "ppo.max_new_tokens=8",
    "ppo.save_every=100",
    "ppo.total_env_steps=96",  # 6 updates of 2 ranks x 2 envs x 4 steps
]


def rows(run: Path) -> list[dict]:
    path = run / "ppo" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_two_cpu_ranks_stop_together_on_one_ranks_sigterm_and_resume_without_lost_rows(tmp_path):
    args = ["ppo", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", *SMALL, "--launch", "ddp",
            "--gpus", "2"]  # fmt: skip
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "vlmppo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "probe-color-tiny"
    deadline = time.time() + 300
    while not rows(run) and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    workers = child_processes(launcher.pid)  # the CLI became torchrun (exec): its children are the two ranks
    assert len(workers) == 2, (workers, launcher.poll())
    os.kill(workers[-1], signal.SIGTERM)  # one rank only: the other must learn of it and stop too
    stdout, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr[-3000:]
    assert "launching: ACCELERATE_USE_CPU=1" in stdout and "--nproc_per_node 2" in stdout
    assert "stopped on a signal on another rank" in " ".join(stdout.split())
    first = rows(run)
    stopped_at = first[-1]["update"]
    assert [r["update"] for r in first] == list(range(1, stopped_at + 1)) and stopped_at < 6
    state = run / "ppo" / "checkpoints" / "last"
    assert json.loads((state / "vlmppo.json").read_text())["update"] == stopped_at
    assert (state / "ranks.pt").is_file()  # rank 1's envs and RNG streams

    out = run_cli(*args, "--resume", "auto", env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming from {run / 'ppo' / 'checkpoints'}" in " ".join(out.stdout.split())
    assert out.stdout.count("done:") == 1  # rank 0 alone reports
    every = rows(run)
    assert [r["update"] for r in every] == [1, 2, 3, 4, 5, 6]  # none lost, none twice
    assert [r["env_steps"] for r in every] == [16 * u for u in range(1, 7)]  # both ranks' steps
    assert every[:stopped_at] == first


def test_the_dry_run_shows_each_ranks_plan_the_memory_per_gpu_and_the_launch_command(tmp_path):
    out = run_cli("ppo", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", "env.n_envs=4",
                  "ppo.total_env_steps=64", "--launch", "ddp", "--gpus", "2", "--dry-run")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join(out.stdout.replace("│", " ").split())  # the plan's table cells, one line
    assert "4 envs x 8 steps = 32 x 2 ranks = 64 samples per update" in text
    assert "updates 1 (64 env steps" in text
    assert "rank 0 4 envs (seeds 0-3)" in text and "rank 1 4 envs (seeds 4-7)" in text
    assert "ddp over 2 processes" in text and "per GPU" in text
    assert "would launch: ACCELERATE_USE_CPU=1" in text and "--nproc_per_node 2" in text
    launched = text.split("would launch:")[1]
    assert "ppo.launch=ddp" in launched and "--gpus" not in launched and "--dry-run" not in launched
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize(
    "launch, message",
    [
        ("zero2", "ppo.launch=zero2 uses DeepSpeed, which is not installed in this environment."),
        (
            "zero3",
            "ppo.launch=zero3 is not supported: each rollout step samples with `generate` from the whole",
        ),
    ],
)
def test_a_zero_launch_that_cannot_run_here_says_why_in_one_paragraph_before_any_work(
    tmp_path, launch, message
):
    if launch == "zero2" and importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed here")
    out = run_cli("ppo", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}", "--launch", launch,
                  "--gpus", "2")  # fmt: skip
    assert out.returncode == 1
    err = " ".join(out.stderr.split())
    assert message in err and "Traceback" not in err and "launching" not in out.stdout
    assert not any(tmp_path.iterdir())


def test_a_process_started_by_a_launcher_never_launches_again(monkeypatch):
    # `accelerate launch` of one process sets no RANK; its ACCELERATE_* variables still mark the process a rank.
    from vlmppo.commands.launching import under_launcher, wants_launch
    from vlmppo.config import load_config

    for mark in ("RANK", "ACCELERATE_DYNAMO_BACKEND", "VLMPPO_LAUNCHED"):
        monkeypatch.delenv(mark, raising=False)
    cfg = load_config("probe-color-tiny", overrides=["ppo.launch=ddp"])
    assert not under_launcher() and wants_launch(cfg, "ppo", None)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    assert under_launcher() and not wants_launch(cfg, "ppo", 2)
