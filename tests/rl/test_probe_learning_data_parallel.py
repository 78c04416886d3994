"""Two gloo ranks learn what one process learns: bench/probe_learning.py's colour probe, PPO from an image-blind
SFT checkpoint, with each rank playing half the envs, stopped by a signal on one rank and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from bench.probe_learning import format_only, greedy_success
from tests.helpers import child_processes, run_cli

UPDATES = 30
# Per rank: 2 envs x 8 steps, minibatches of 8 in micro-batches of 4; over 2 ranks that is the one-process
# probe's update (4 envs x 8 steps, minibatches of 16), so the two should learn alike.
PER_RANK = ["env.n_envs=2", "ppo.n_steps=8", "ppo.minibatch_size=8", "ppo.micro_batch_size=4"]


@pytest.mark.slow
def test_two_ranks_teach_an_image_blind_sft_checkpoint_to_use_the_image_through_a_kill_and_resume(tmp_path):
    from vlmppo.config import load_config, run_dir
    from vlmppo.data.collect import collect
    from vlmppo.data.label import label
    from vlmppo.data.preprocess import preprocess
    from vlmppo.sft import train_sft

    overrides = [f"run.output_dir={tmp_path}", "sft.max_steps=150", "ppo.init_from=sft",
                 f"ppo.total_env_steps={UPDATES * 32}", *PER_RANK]  # fmt: skip
    cfg = load_config("probe-color-tiny", overrides=overrides)
    collect(cfg), label(cfg), preprocess(cfg)
    format_only(run_dir(cfg) / "data" / "train.jsonl")
    train_sft(cfg)
    before = greedy_success(cfg, "sft", 64, seed=10_000)

    args = ["ppo", "--preset", "probe-color-tiny", *overrides, "--launch", "ddp", "--gpus", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    launcher = subprocess.Popen([sys.executable, "-m", "vlmppo", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    metrics = run_dir(cfg) / "ppo" / "metrics.jsonl"
    deadline = time.time() + 900
    while (
        not metrics.is_file() or len(metrics.read_text().splitlines()) < UPDATES // 3
    ) and time.time() < deadline:
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        time.sleep(0.5)
    os.kill(child_processes(launcher.pid)[0], signal.SIGTERM)  # rank 0 this time
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    stopped = len(metrics.read_text().splitlines())
    assert stopped < UPDATES
    out = run_cli(*args, "--resume", "auto", env={"OMP_NUM_THREADS": "1"}, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["update"] for r in rows] == list(range(1, UPDATES + 1))

    after = greedy_success(cfg, "ppo", 64, seed=10_000)
    assert before["success_rate"] < 0.9, before  # SFT learned the format, not the colour
    assert after["success_rate"] >= 0.95 and after["invalid_action_rate"] == 0.0, after
