"""`vlmppo slurm render|submit|status|cancel|logs`: sbatch files from the same presets."""

from __future__ import annotations

from typing import Annotated

import typer

from vlmppo.commands._common import (
    ConfigOpt,
    OverridesArg,
    PresetOpt,
    examples,
    resolve_config,
    stage_not_built,
)

app = typer.Typer(
    help="Render sbatch files from presets, submit them (arrays, chains, multi-node), watch and cancel jobs.",
    no_args_is_help=True,
    epilog=examples(
        "vlmppo slurm render ppo --preset numberline-qwen slurm.partition=gpu",
        "vlmppo slurm submit pipeline --preset minigrid-doorkey-qwen --array-seeds 1,2,3",
    ),
)

StageArg = Annotated[str, typer.Argument(help="collect | label | preprocess | sft | ppo | eval | pipeline.")]


@app.command(
    epilog=examples("vlmppo slurm render ppo --preset numberline-qwen slurm.nodes=2 slurm.gpus_per_node=8")
)
def render(
    stage: StageArg,
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    out: Annotated[str | None, typer.Option(help="Where to write the sbatch file.")] = None,
):
    """Write runs/<name>/config.yaml and runs/<name>/slurm/<stage>.sbatch and print both."""
    resolve_config(preset, config, overrides)
    stage_not_built("slurm render", 9)


@app.command(
    epilog=examples(
        "vlmppo slurm submit ppo --preset numberline-tiny",
        "vlmppo slurm submit pipeline --preset numberline-qwen --array-seeds 1,2",
    )
)
def submit(
    stage: StageArg,
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    array_seeds: Annotated[
        str | None, typer.Option(help="Comma-separated seeds: one array task each.")
    ] = None,
    after: Annotated[str | None, typer.Option(help="Start after this job id succeeds.")] = None,
):
    """Render and submit with sbatch --parsable; record the job id in runs/<name>/slurm/jobs.jsonl."""
    resolve_config(preset, config, overrides)
    stage_not_built("slurm submit", 9)


@app.command(epilog=examples("vlmppo slurm status", "vlmppo slurm status numberline-qwen"))
def status(target: Annotated[str | None, typer.Argument(help="Run name or job id.")] = None):
    """State, elapsed time, node and the last metrics line of each job."""
    stage_not_built("slurm status", 9)


@app.command(epilog=examples("vlmppo slurm cancel 12345", "vlmppo slurm cancel numberline-qwen"))
def cancel(target: Annotated[str, typer.Argument(help="Run name or job id.")]):
    """Cancel a run's jobs (or one job)."""
    stage_not_built("slurm cancel", 9)


@app.command(epilog=examples("vlmppo slurm logs 12345", "vlmppo slurm logs numberline-qwen"))
def logs(target: Annotated[str, typer.Argument(help="Run name or job id.")]):
    """Print a job's output file."""
    stage_not_built("slurm logs", 9)
