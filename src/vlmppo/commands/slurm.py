"""`vlmppo slurm render|submit|status|cancel|logs`: sbatch files from the same presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmppo.commands._common import ConfigOpt, OverridesArg, PresetOpt, examples, resolve_config
from vlmppo.registry import STAGES

app = typer.Typer(
    help="Render sbatch files from presets, submit them (arrays, chains, multi-node), watch and cancel jobs.",
    no_args_is_help=True,
    epilog=examples(
        "vlmppo slurm render ppo --preset numberline-qwen slurm.partition=gpu",
        "vlmppo slurm submit pipeline --preset minigrid-doorkey-qwen --array-seeds 1,2,3",
    ),
)

StageArg = Annotated[str, typer.Argument(help=" | ".join((*STAGES, "pipeline")) + ".")]
SeedsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated seeds: a job array, one task and run <name>-seed<k> each.")
]
FromOpt = Annotated[str | None, typer.Option("--from", help="pipeline: first stage.")]
ToOpt = Annotated[str | None, typer.Option("--to", help="pipeline: last stage.")]
TargetArg = Annotated[str, typer.Argument(help="Run name (or run folder) or job id.")]
RunsOpt = Annotated[
    Path, typer.Option("--runs-dir", help="Where runs live (run.output_dir), to find a run's jobs.jsonl.")
]


def _stages(stage: str, from_stage: str | None, to_stage: str | None) -> list[str]:
    from vlmppo.errors import SlurmError
    from vlmppo.slurm import pipeline_stages

    if stage == "pipeline":
        return pipeline_stages(from_stage, to_stage)
    if from_stage or to_stage:
        raise SlurmError(
            "--from/--to go with the stage `pipeline`.", hint="vlmppo slurm submit pipeline --from sft."
        )
    return pipeline_stages(stage, stage)


def _print_file(path: Path, text: str, lexer: str) -> None:
    from vlmppo.console import heading, print_code

    heading(str(path))
    # soft_wrap: long lines stay whole, so what is printed can be copied into a shell.
    print_code(text, lexer, soft_wrap=True)


@app.command(
    epilog=examples(
        "vlmppo slurm render ppo --preset numberline-tiny",
        "vlmppo slurm render sft --preset numberline-qwen slurm.nodes=2 slurm.gpus_per_node=8",
    )
)
def render(
    stage: StageArg,
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the sbatch file (one stage only).")] = None,
    array_seeds: SeedsOpt = None,
    from_stage: FromOpt = None,
    to_stage: ToOpt = None,
):
    """Write runs/<name>/config.yaml and runs/<name>/slurm/<stage>.sbatch and print both."""
    from vlmppo.console import console
    from vlmppo.errors import SlurmError
    from vlmppo.slurm import check_request, parse_seeds, write_job

    cfg = resolve_config(preset, config, overrides)
    stages = _stages(stage, from_stage, to_stage)
    if out is not None and len(stages) > 1:
        raise SlurmError(
            "--out takes one stage; `pipeline` writes one file per stage into runs/<name>/slurm/."
        )
    seeds = parse_seeds(array_seeds)
    for name in stages:
        check_request(cfg, name)
    chain = stages if stage == "pipeline" else None
    jobs = [write_job(cfg, name, seeds=seeds, out=out, pipeline=chain) for name in stages]
    for path in jobs[0].configs:
        _print_file(path, path.read_text(encoding="utf-8"), "yaml")
    for job in jobs:
        _print_file(job.script, job.text, "bash")
        for note in job.notes:
            console.print(f"[yellow]note:[/yellow] {note}")
    import shlex

    from rich.markup import escape

    paste = escape(shlex.join(["sbatch", str(jobs[0].script)]))  # a line to paste into a shell: quoted
    console.print(
        f"[green]wrote[/green] {len(jobs[0].configs)} config(s) and {len(jobs)} sbatch file(s); "
        f"submit with `{paste}` or `vlmppo slurm submit`.",
        soft_wrap=True,
    )


@app.command(
    epilog=examples(
        "vlmppo slurm submit ppo --preset numberline-tiny",
        "vlmppo slurm submit ppo --preset numberline-qwen --array-seeds 1,2,3 --after 12345",
        "vlmppo slurm submit pipeline --preset numberline-qwen --from sft --to eval",
    )
)
def submit(
    stage: StageArg,
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    array_seeds: SeedsOpt = None,
    after: Annotated[str | None, typer.Option(help="Start after this job id succeeds (afterok).")] = None,
    from_stage: FromOpt = None,
    to_stage: ToOpt = None,
    parsable: Annotated[
        bool, typer.Option("--parsable", help="Print only the job ids, one per line.")
    ] = False,
):
    """Render and submit with sbatch --parsable; record the job id in runs/<name>/slurm/jobs.jsonl."""
    from vlmppo.console import console
    from vlmppo.slurm import parse_seeds, submit_chain

    cfg = resolve_config(preset, config, overrides)
    stages = _stages(stage, from_stage, to_stage)
    submissions = submit_chain(
        cfg, stages, seeds=parse_seeds(array_seeds), after=after, pipeline=stage == "pipeline"
    )
    for sub in submissions:
        if parsable:
            typer.echo(sub.job_id)
            continue
        job = sub.job
        array = f" (array: seeds {','.join(map(str, job.seeds))})" if job.seeds else ""
        after_text = (
            f", starts once job {sub.dependency.split(':', 1)[1]} succeeded" if sub.dependency else ""
        )
        console.print(f"[green]submitted[/green] job {sub.job_id}: vlmppo {job.stage}{array}{after_text}")
        console.print(f"  script: {job.script}\n  log:    {job.output}", soft_wrap=True)
        for note in job.notes:
            console.print(f"[yellow]note:[/yellow] {note}")


@app.command(epilog=examples("vlmppo slurm status", "vlmppo slurm status numberline-qwen"))
def status(
    target: Annotated[
        str | None, typer.Argument(help="Run name (or run folder) or job id; all runs if left out.")
    ] = None,
    runs_dir: RunsOpt = Path("runs"),
):
    """State, elapsed time, node and the last metrics line of each job."""
    from rich.table import Table

    from vlmppo.console import console
    from vlmppo.slurm import job_states, last_metrics, records

    rows = records(target, runs_dir)
    if not rows:
        console.print(f"No SLURM jobs recorded under {runs_dir}/.")
        return
    states = job_states(list(dict.fromkeys(row["job_id"] for row in rows)))
    table = Table(title_justify="left", title=f"SLURM jobs: {target or runs_dir}")
    for column in ("job", "stage", "state", "elapsed", "node", "last metrics"):
        table.add_column(column, overflow="fold")
    only_task = target if target and "_" in target and target.replace("_", "").isdigit() else None
    for row in rows:
        for state in states.get(row["job_id"], []):
            if only_task and state.job_id != only_task:
                continue
            metrics = last_metrics(row, state.task)
            shown = "  ".join(f"{k}={_short(v)}" for k, v in metrics.items()) if metrics else ""
            table.add_row(state.job_id, row.get("stage", "?"), state.state, state.elapsed, state.node, shown)
    console.print(table)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command(epilog=examples("vlmppo slurm cancel 12345", "vlmppo slurm cancel numberline-qwen"))
def cancel(target: TargetArg, runs_dir: RunsOpt = Path("runs")):
    """Cancel a run's jobs that can still run (or one job)."""
    from vlmppo.console import console
    from vlmppo.slurm import cancel as cancel_jobs

    ids = cancel_jobs(target, runs_dir)
    if ids:
        console.print(f"cancelled {', '.join(ids)}")
    else:
        console.print(f"nothing to cancel: every job of {target} has finished")


@app.command(epilog=examples("vlmppo slurm logs 12345", "vlmppo slurm logs numberline-qwen --lines 50"))
def logs(
    target: TargetArg,
    runs_dir: RunsOpt = Path("runs"),
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", help="Only the last N lines of each file.")
    ] = None,
):
    """Print a job's output and error files (every task of an array; a run's latest job)."""
    from vlmppo.console import console, heading
    from vlmppo.slurm import log_files

    files = log_files(target, runs_dir)
    for path in files:
        if path.suffix == ".err" and path.stat().st_size == 0:
            continue  # an empty error file says nothing
        text = path.read_text(encoding="utf-8", errors="replace")
        if lines is not None:
            text = "\n".join(text.splitlines()[-lines:])
        heading(str(path))
        console.print(
            text, markup=False, highlight=False, soft_wrap=True, end="" if text.endswith("\n") else "\n"
        )
