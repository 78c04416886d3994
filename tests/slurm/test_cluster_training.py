"""Real training jobs on the local SLURM cluster, from the CLI: PPO and SFT run, survive a requeue, and continue.

`scontrol requeue` is what preemption does: SLURM sends SIGTERM to every process of the job, the training loop
finishes its update (or step), saves a checkpoint and exits 0, SLURM puts the job back in the queue, and the
next start runs `--resume auto` from that checkpoint. Every test submits from an environment without
OMP_NUM_THREADS, as a user would, so the job runs on the rendered script's CPU default. 5-35 s each on 2 cores,
most of it interpreter start-up and SLURM's 10 s hold on a requeued job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.slurm.helpers import job_info, log_text, requeue, wait_for_state, wait_until

from vlmppo.slurm.query import FINAL_STATES

# One xdist worker runs every job of the one local cluster (jobs of two workers would queue behind each other).
pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

JOB = ["slurm.cpus_per_task=1", "slurm.mem=1G", "slurm.time=00:10:00", "slurm.gpus_per_node=0"]
# One PPO update: 2 envs x 4 steps = 8 env steps, one epoch of two minibatches; ~0.5 s on one core.
SMALL_PPO = [
    "env.n_envs=2", "ppo.n_steps=4", "ppo.minibatch_size=4", "ppo.micro_batch_size=2", "ppo.n_epochs=1",
    "ppo.max_new_tokens=8",
]  # fmt: skip
STEPS_PER_UPDATE = 8
# SFT: ~25 optimizer steps/s at batch 2; eval and periodic saves only at the end, so a checkpoint in between
# can only be the one the signal made.
SMALL_SFT = ["sft.batch_size=2", "sft.eval_every=100000", "sft.save_every=100000"]


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m vlmppo ARGS` in ``tmp_path`` as a user would run it: OMP_NUM_THREADS is not set (the conftest
    sets it for this process, and sbatch would pass it on to the job)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["COLUMNS"] = "200"  # the job inherits it: log lines stay whole
    return subprocess.run(
        [sys.executable, "-m", "vlmppo", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def submit(tmp_path: Path, job_ids: list[str], stage: str, preset: str, *overrides: str) -> str:
    out = cli(tmp_path, "slurm", "submit", stage, "--preset", preset, *JOB, *overrides, "--parsable")
    assert out.returncode == 0, out.stderr + out.stdout
    job_id = out.stdout.strip()
    assert job_id.isdigit(), out.stdout
    job_ids.append(job_id)
    return job_id


def finished(job_id: str, timeout: float = 240) -> dict:
    """Wait for the job's final state; it must be COMPLETED (its log is shown otherwise)."""
    (job,) = wait_for_state(job_id, timeout=timeout)
    assert job["JobState"] == "COMPLETED", f"{job['JobState']} {job.get('ExitCode')}\n{log_text(job)}"
    return job


def wait_for_rows(job_id: str, metrics: Path, *, timeout: float = 120) -> None:
    """Until the run has logged its first row; fails at once (with the log) if the job ends first."""

    def logged_or_ended() -> bool:
        if rows(metrics):
            return True
        (job,) = job_info(job_id)
        assert job["JobState"] not in FINAL_STATES, (
            f"job {job_id} ended before its first metrics row:\n{log_text(job)}"
        )
        return False

    wait_until(logged_or_ended, f"the first row of {metrics}", timeout=timeout)


def rows(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []


def saved(folder: Path) -> dict:
    return json.loads((folder / "vlmppo.json").read_text())


def output(job: dict) -> str:
    """The job's whole stdout file (both runs of a requeued job: it is opened in append mode)."""
    return Path(job["StdOut"]).read_text(errors="replace")


def test_ppo_job_runs_to_completion_and_its_metrics_appear(tmp_path, job_ids):
    updates = 3
    job_id = submit(
        tmp_path,
        job_ids,
        "ppo",
        "numberline-tiny",
        f"ppo.total_env_steps={updates * STEPS_PER_UPDATE}",
        *SMALL_PPO,
    )
    job = finished(job_id)
    assert job["Restarts"] == "0"
    ppo = tmp_path / "runs/numberline-tiny/ppo"
    assert [r["update"] for r in rows(ppo / "metrics.jsonl")] == [1, 2, 3]
    assert saved(ppo / "checkpoints/last")["update"] == updates
    assert "resuming from" not in output(job)  # --resume auto on a fresh run starts fresh
    status = cli(tmp_path, "slurm", "status", "numberline-tiny")
    assert status.returncode == 0 and job_id in status.stdout and "update=3" in status.stdout, status.stdout


def test_requeue_while_ppo_runs_continues_from_the_checkpoint_it_saved(tmp_path, job_ids):
    updates = 12
    job_id = submit(
        tmp_path, job_ids, "ppo", "numberline-tiny", f"ppo.total_env_steps={updates * STEPS_PER_UPDATE}",
        "ppo.save_every=1000", *SMALL_PPO,
    )  # fmt: skip
    ppo = tmp_path / "runs/numberline-tiny/ppo"
    wait_for_rows(job_id, ppo / "metrics.jsonl")
    requeue(job_id)
    job = finished(job_id)
    text = output(job)
    assert job["Restarts"] == "1", text
    stopped = re.search(r"stopped on SIGTERM after update (\d+)", text)
    assert stopped, f"the run did not stop on the requeue's SIGTERM:\n{text}"
    at = int(stopped.group(1))
    assert 1 <= at < updates, f"the run stopped at update {at} of {updates}: nothing was left to resume"
    assert f"resuming from runs/numberline-tiny/ppo/checkpoints/{at:06d}" in text, text
    # Each update trained and logged once, in order: none repeated after the resume, none skipped.
    logged = rows(ppo / "metrics.jsonl")
    assert [r["update"] for r in logged] == list(range(1, updates + 1))
    assert [r["env_steps"] for r in logged] == [u * STEPS_PER_UPDATE for u in range(1, updates + 1)]
    assert sorted(p.name for p in (ppo / "checkpoints").iterdir()) == [f"{at:06d}", f"{updates:06d}", "last"]
    assert saved(ppo / f"checkpoints/{at:06d}")["update"] == at
    last = saved(ppo / "checkpoints/last")
    assert (last["update"], last["env_steps"]) == (updates, updates * STEPS_PER_UPDATE)


@pytest.fixture(scope="module")
def color_data(tmp_path_factory) -> Path:
    """probe-color-tiny's SFT data, made once by collect, label and preprocess (run here, not as jobs)."""
    root = tmp_path_factory.mktemp("color-data")
    for stage in ("collect", "label", "preprocess"):
        out = cli(root, stage, "--preset", "probe-color-tiny", "collect.episodes=16")
        assert out.returncode == 0, out.stderr + out.stdout
    return root / "runs/probe-color-tiny"


def with_data(tmp_path: Path, run: Path) -> Path:
    """A copy of the prepared run (data/ names its frames in collect/); returns where SFT writes."""
    shutil.copytree(run, tmp_path / "runs/probe-color-tiny")
    return tmp_path / "runs/probe-color-tiny/sft"


def test_requeue_while_sft_runs_continues_the_step_counter(tmp_path, job_ids, color_data):
    steps = 250  # ~8 s of training: the requeue lands long before the end
    sft = with_data(tmp_path, color_data)
    job_id = submit(tmp_path, job_ids, "sft", "probe-color-tiny", f"sft.max_steps={steps}", *SMALL_SFT)
    wait_for_rows(job_id, sft / "metrics.jsonl")
    requeue(job_id)
    job = finished(job_id)
    text = output(job)
    assert job["Restarts"] == "1", text
    stopped = re.search(r"stopped on SIGTERM after step (\d+)", text)
    assert stopped, f"the run did not stop on the requeue's SIGTERM:\n{text}"
    at = int(stopped.group(1))
    assert 1 <= at < steps, f"the run stopped at step {at} of {steps}: nothing was left to resume"
    assert f"resumed from runs/probe-color-tiny/sft/checkpoints/{at:06d}" in text, text
    logged = rows(sft / "metrics.jsonl")
    assert [r["step"] for r in logged if not r.get("final")] == list(range(1, steps + 1))
    assert [r["step"] for r in logged if r.get("final")] == [steps]  # one end of the run, not two
    names = sorted(p.name for p in (sft / "checkpoints").iterdir())
    assert names == [f"{at:06d}", f"{steps:06d}", "final", "last"]
    assert (
        saved(sft / f"checkpoints/{at:06d}")["step"] == at
        and saved(sft / "checkpoints/final")["step"] == steps
    )


def test_sft_job_with_a_shipped_launch_config_runs_through_accelerate(tmp_path, job_ids, color_data):
    """sft.launch=ddp: the job runs `accelerate launch --config_file <shipped ddp.yaml>` (one CPU process here)."""
    sft = with_data(tmp_path, color_data)
    job_id = submit(
        tmp_path, job_ids, "sft", "probe-color-tiny", "sft.launch=ddp", "sft.max_steps=3", *SMALL_SFT
    )
    script = (tmp_path / "runs/probe-color-tiny/slurm/sft.sbatch").read_text()
    assert "accelerate.commands.launch --config_file" in script and "/sft/launch/ddp.yaml" in script
    job = finished(job_id)
    assert [r["step"] for r in rows(sft / "metrics.jsonl") if not r.get("final")] == [1, 2, 3]
    assert saved(sft / "checkpoints/final")["step"] == 3
    assert job["Restarts"] == "0"


def test_a_two_rank_ppo_job_runs_on_cpu_processes_through_torchrun(tmp_path, job_ids):
    """slurm.cpu_processes=2: the multi-process PPO job's launch (torchrun, gloo) really runs two ranks on the
    local one-node cluster; each rank plays its own envs, so an update counts both ranks' env steps."""
    updates = 2
    job_id = submit(
        tmp_path, job_ids, "ppo", "numberline-tiny", "slurm.cpu_processes=2", "ppo.launch=ddp",
        f"ppo.total_env_steps={2 * updates * STEPS_PER_UPDATE}", *SMALL_PPO,
    )  # fmt: skip
    script = (tmp_path / "runs/numberline-tiny/slurm/ppo.sbatch").read_text()
    assert "export ACCELERATE_USE_CPU=1" in script and "torch.distributed.run --nproc_per_node 2" in script
    job = finished(job_id)
    ppo = tmp_path / "runs/numberline-tiny/ppo"
    metrics = rows(ppo / "metrics.jsonl")
    assert [r["update"] for r in metrics] == [1, 2]
    assert [r["env_steps"] for r in metrics] == [16, 32]  # 2 ranks x 2 envs x 4 steps per update
    assert (ppo / "checkpoints/last/ranks.pt").is_file()  # rank 1's own envs and RNG streams
    assert output(job).count("done:") == 1  # rank 0 alone reports
