"""Find a run's jobs, ask SLURM how they are, cancel them, and locate their log files.

A target is a run name (or run folder) whose ``slurm/jobs.jsonl`` lists its jobs, or a job id. States come from
``scontrol show job`` (live and recently finished jobs) and, for older ones, ``sacct`` where the cluster keeps
accounting.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from vlmppo.errors import SlurmError
from vlmppo.io import read_jsonl
from vlmppo.slurm.submit import JOBS_FILE, run_tool

# States after which a job will not run again (unless requeued by hand).
FINAL_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "TIMEOUT", "UNKNOWN",
}  # fmt: skip
_JOB_ID = re.compile(r"^(\d+)(?:_(\d+))?$")
# scontrol -o prints "Key=value Key=value ..."; a value may hold spaces (JobName), a key never does.
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


@dataclass
class JobState:
    """One job or array task as SLURM reports it."""

    job_id: str
    state: str
    elapsed: str = ""
    node: str = ""
    task: int | None = None
    stdout: str | None = None

    @property
    def final(self) -> bool:
        return self.state.split()[0] in FINAL_STATES


def is_job_id(target: str) -> bool:
    return _JOB_ID.match(target) is not None


def records(target: str | None, runs_dir: Path) -> list[dict]:
    """The recorded submissions for a run name or folder, a job id, or (None) every run under ``runs_dir``."""
    if target is None:
        return [
            row
            for path in sorted(Path(runs_dir).glob(f"*/slurm/{JOBS_FILE}"))
            for row in read_jsonl(path, on_error="skip")
        ]
    if is_job_id(target):
        base = _JOB_ID.match(target).group(1)
        found = [row for row in records(None, runs_dir) if row["job_id"] == base]
        # A job vlmppo did not record (another folder, another tool) is still a job SLURM knows.
        return found or [{"job_id": base, "stage": "?"}]
    for folder in (Path(runs_dir) / target, Path(target)):
        path = folder / "slurm" / JOBS_FILE
        if path.is_file():
            return list(read_jsonl(path, on_error="skip"))
    raise SlurmError(
        f"No SLURM jobs recorded for run '{target}' (looked for {Path(runs_dir) / target / 'slurm' / JOBS_FILE}).",
        hint="Pass a run name submitted with `vlmppo slurm submit` from this folder, a run folder, or a job id.",
    )


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """``scontrol show job -o`` output: one dict per line (one per array task once tasks have started)."""
    jobs = []
    for line in text.splitlines():
        keys = list(_KEY.finditer(line))
        jobs.append(
            {
                m.group(1): line[m.end() : keys[i + 1].start() if i + 1 < len(keys) else len(line)].strip()
                for i, m in enumerate(keys)
            }
        )
    return [job for job in jobs if "JobId" in job]


def _from_scontrol(job: dict[str, str]) -> JobState:
    state = job.get("JobState", "UNKNOWN")
    reason = job.get("Reason", "None")
    if state == "PENDING" and reason not in ("None", "(null)"):
        state = f"PENDING ({reason})"
    task = job.get("ArrayTaskId")
    job_id = f"{job['ArrayJobId']}_{task}" if task and job.get("ArrayJobId") else job["JobId"]
    node = job.get("NodeList", "")
    return JobState(
        job_id=job_id,
        state=state,
        elapsed=job.get("RunTime", ""),
        node="" if node == "(null)" else node,
        task=int(task) if task and task.isdigit() else None,
        stdout=job.get("StdOut"),
    )


def job_states(job_ids: list[str]) -> dict[str, list[JobState]]:
    """SLURM's view of each job (a list: one entry per array task), keyed by the ids asked for."""
    states: dict[str, list[JobState]] = {}
    missing = []
    for job_id in job_ids:
        proc = run_tool(["scontrol", "show", "job", "-o", job_id])
        found = [_from_scontrol(job) for job in parse_scontrol(proc.stdout)] if proc.returncode == 0 else []
        if found:
            states[job_id] = sorted(found, key=lambda s: -1 if s.task is None else s.task)
        else:
            missing.append(job_id)
    if missing:
        states.update(_from_sacct(missing))
    return states


def _from_sacct(job_ids: list[str]) -> dict[str, list[JobState]]:
    """Jobs that left slurmctld's memory: accounting knows them, where the cluster has it."""
    states: dict[str, list[JobState]] = {job_id: [] for job_id in job_ids}
    fmt = "JobID,State,Elapsed,NodeList"
    proc = run_tool(["sacct", "-n", "-P", "-X", "--format", fmt, "-j", ",".join(job_ids)])
    if proc.returncode == 0:
        for line in proc.stdout.splitlines():
            fields = line.split("|")
            if len(fields) != 4:
                continue
            job_id, state, elapsed, node = fields
            base, _, task = job_id.partition("_")
            if base in states:
                states[base].append(
                    JobState(job_id, state, elapsed, "" if node == "None assigned" else node,
                             int(task) if task.isdigit() else None)
                )  # fmt: skip
    for job_id, found in states.items():
        if not found:
            found.append(JobState(job_id, "UNKNOWN (not in slurmctld; no accounting)"))
    return states


def last_metrics(row: dict, task: int | None) -> dict | None:
    """The last line of the run's ``<stage>/metrics.jsonl`` (the array task's own run for arrays)."""
    run_dirs = row.get("run_dirs") or []
    if not run_dirs:
        return None
    run = run_dirs[task] if task is not None and task < len(run_dirs) else run_dirs[0]
    path = Path(run) / row["stage"] / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a crash or being written right now
    return None


def cancel(target: str, runs_dir: Path) -> list[str]:
    """scancel a job id, or every job of a run that can still run; returns the ids cancelled."""
    if is_job_id(target):
        ids = [target]
    else:
        rows = records(target, runs_dir)
        states = job_states([row["job_id"] for row in rows])
        ids = [job_id for job_id, found in states.items() if any(not s.final for s in found)]
    if not ids:
        return []
    proc = run_tool(["scancel", *ids])
    if proc.returncode != 0:
        raise SlurmError(f"scancel {' '.join(ids)} failed: {(proc.stderr or proc.stdout).strip()}")
    return ids


def log_files(target: str, runs_dir: Path) -> list[Path]:
    """The output and error files of a job (every task of an array), or of a run's latest job."""
    rows = records(target, runs_dir)
    row = rows[-1]
    job_id, task = row["job_id"], None
    if is_job_id(target):
        task = _JOB_ID.match(target).group(2)
    patterns = [row[key] for key in ("output", "error") if row.get(key)]
    if not patterns:
        # Not submitted by vlmppo: ask SLURM where its output goes.
        found = job_states([job_id]).get(job_id, [])
        patterns = [s.stdout for s in found if s.stdout]
    files: list[Path] = []
    for pattern in patterns:
        # Only the array task number is a wildcard (every task's file); the rest of the path is taken literally.
        head, sep, tail = glob.escape(pattern.replace("%A", job_id).replace("%j", job_id)).partition("%a")
        files += [Path(p) for p in sorted(glob.glob(head + (task or "*") + tail if sep else head))]
    if not files:
        shown = ", ".join(patterns) or "(SLURM reports no output file)"
        raise SlurmError(
            f"No log file yet for job {job_id} ({row.get('stage', '?')}): nothing at {shown}.",
            hint=f"The job may still be pending: `{shlex.join(['vlmppo', 'slurm', 'status', str(target)])}`.",
        )
    return files
