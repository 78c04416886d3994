"""Submit rendered jobs with ``sbatch --parsable``, chain them, and record them in ``jobs.jsonl``.

Each submission appends one line to ``<run>/slurm/jobs.jsonl`` (job id, stage, time, script, configs, seeds,
dependency, log patterns): ``vlmppo slurm status|cancel|logs RUN`` read it back.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vlmppo.config.schema import Config
from vlmppo.errors import SlurmError
from vlmppo.io import JsonlWriter
from vlmppo.slurm.render import JobFiles, write_job
from vlmppo.slurm.request import check_job_id, check_request

JOBS_FILE = "jobs.jsonl"
TIMEOUT_S = 120


@dataclass
class Submission:
    job_id: str
    job: JobFiles
    dependency: str | None


def slurm_tool(name: str) -> str:
    """The path of a SLURM client command; SlurmError that says how to get one when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise SlurmError(
            f"`{name}` was not found on PATH, so SLURM's client commands are not installed on this machine.",
            hint="Run this on the cluster's login node (where `sinfo` works), or install the client "
            "(Debian/Ubuntu: apt-get install slurm-client); .ci/slurm-up.sh starts a one-node test cluster as "
            "root. `vlmppo slurm render` writes the sbatch file without SLURM.",
        )
    return path


def run_tool(argv: list[str], *, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a SLURM command (found with ``slurm_tool``) and capture its output; the caller reads the status."""
    argv = [slurm_tool(argv[0]), *argv[1:]]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"`{shlex.join(argv)}` did not answer within {timeout:.0f} s.",
            hint="Is slurmctld reachable? Try `sinfo`.",
        ) from None


def sbatch(job: JobFiles, *, dependency: str | None) -> str:
    """Submit one script; returns its job id. SLURM's own message when it refuses."""
    argv = ["sbatch", "--parsable"]
    if dependency:
        argv.append(f"--dependency={dependency}")
    argv.append(str(job.script))
    proc = run_tool(argv)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise SlurmError(
            f"SLURM rejected the job {job.script}: {message}",
            hint="Check the preset's slurm: section (partition, account, qos, GPUs, memory, time) against "
            "`sinfo` and your cluster's limits.",
        )
    # --parsable prints "<id>" or "<id>;<cluster>".
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch accepted {job.script} but printed no job id: {proc.stdout.strip()!r}.")
    return job_id


def record(submission: Submission) -> None:
    """Append the submission to ``<run>/slurm/jobs.jsonl``."""
    job = submission.job
    row = {
        "job_id": submission.job_id,
        "stage": job.stage,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "script": str(job.script),
        "configs": [str(p) for p in job.configs],
        "run_dirs": [str(p) for p in job.run_dirs],
        "array_seeds": job.seeds,
        "dependency": submission.dependency,
        "output": job.output,
        "error": job.error,
    }
    with JsonlWriter(job.slurm_dir / JOBS_FILE) as writer:
        writer.write_many([row])


def submit_stage(
    cfg: Config,
    stage: str,
    *,
    seeds: list[int] | None = None,
    after: str | None = None,
    cwd: Path | None = None,
) -> Submission:
    """Render ``stage`` (with an array over ``seeds``) and submit it, after job ``after`` succeeded if given."""
    return submit_chain(cfg, [stage], seeds=seeds, after=after, cwd=cwd)[0]


def submit_chain(
    cfg: Config,
    stages: list[str],
    *,
    seeds: list[int] | None = None,
    after: str | None = None,
    cwd: Path | None = None,
    pipeline: bool = False,
) -> list[Submission]:
    """Submit ``stages`` in order, each starting only after the one before it succeeded (``afterok``).

    Everything is checked and rendered before the first submission; if SLURM refuses a later job, the jobs
    already submitted for this chain are cancelled so no half chain is left waiting. ``pipeline``: the stages
    are a ``vlmppo pipeline`` run, so PPO starts from this run's SFT checkpoint as it does there (when
    ``ppo.init_from`` is null and SFT is in the chain or has a checkpoint).
    """
    dependency = f"afterok:{check_job_id(after)}" if after else None
    for stage in stages:
        check_request(cfg, stage)
    slurm_tool("sbatch")
    jobs = [
        write_job(cfg, stage, seeds=seeds, cwd=cwd, pipeline=stages if pipeline else None) for stage in stages
    ]
    submitted: list[Submission] = []
    for job in jobs:
        try:
            job_id = sbatch(job, dependency=dependency)
        except SlurmError as exc:
            if submitted:
                ids = [s.job_id for s in submitted]
                run_tool(["scancel", *ids])
                exc.message += (
                    f" The jobs submitted before it in this chain ({', '.join(ids)}) were cancelled."
                )
            raise
        submission = Submission(job_id, job, dependency)
        record(submission)
        submitted.append(submission)
        dependency = f"afterok:{job_id}"
    return submitted


def pipeline_stages(from_stage: str | None = None, to_stage: str | None = None) -> list[str]:
    """The stages from ``from_stage`` to ``to_stage`` (inclusive) in pipeline order."""
    from vlmppo.config.plan import stage_range

    return stage_range(from_stage, to_stage, error=SlurmError)
