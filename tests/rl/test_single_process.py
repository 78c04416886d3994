"""Multi-process PPO is not built yet: a launch of several processes refuses in one line, writing nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from vlmppo.errors import LaunchError
from vlmppo.rl.startup import check_single_process

MESSAGE = "multi-GPU PPO is not built yet"


def test_two_cpu_processes_under_torchrun_refuse_once_and_write_nothing(tmp_path):
    # `accelerate launch --num_processes 2 --cpu` silently runs one process; torchrun really starts two.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "COLUMNS": "200"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["-m", "vlmppo", "ppo", "--preset", "probe-color-tiny", f"run.output_dir={tmp_path}"]
    out = subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert (out.stdout + out.stderr).count(MESSAGE) == 1, out.stderr[-3000:]
    # torchrun reports the failed workers with its own traceback; none comes from vlmppo's code
    assert not re.search(r'File "[^"]*/vlmppo/[^"]*\.py"', out.stdout + out.stderr)
    assert not any(tmp_path.iterdir())  # no run folder, config or checkpoint


def test_the_engine_refuses_a_world_of_several_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(LaunchError, match="launched as 8 processes"):
        check_single_process()
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_single_process()
