"""Options shared by the stage commands, and the config/plan helpers they call.

Nothing here imports torch: ``vlmppo <cmd> --help`` must stay instant.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", "-p", help="Preset name (see `vlmppo presets list`) or path to a YAML file."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML file applied on top of the preset (e.g. a run's config.yaml)."),
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Overrides applied last, as key.sub=value (e.g. ppo.clip_range=0.2).", show_default=False
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved config and the plan, then exit.")
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume", help="'auto' (newest complete checkpoint of this run, if any) or a checkpoint path."
    ),
]


def examples(*lines: str) -> str:
    """An epilog of real example command lines, one per paragraph (Rich folds single newlines)."""
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


def resolve_config(preset, config_file, overrides, extra: list[str] | None = None):
    """Load the config from the command's options; options like --episodes become overrides applied last."""
    from vlmppo.config import load_config
    from vlmppo.errors import ConfigError

    if not preset and not config_file:
        raise ConfigError(
            "No config given.",
            hint="Pass --preset NAME (see `vlmppo presets list`) or --config FILE.",
        )
    return load_config(preset, config_file, list(overrides or []) + list(extra or []))


def print_dry_run(cfg, *stages: str) -> None:
    """Print the resolved YAML and each stage's derived plan."""
    from rich.syntax import Syntax
    from rich.table import Table

    from vlmppo.config import config_to_yaml
    from vlmppo.config.plan import stage_plan
    from vlmppo.console import console

    console.print(Syntax(config_to_yaml(cfg), "yaml", background_color="default"))
    for stage in stages:
        table = Table(title=f"plan: vlmppo {stage}", show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        for key, value in stage_plan(cfg, stage):
            table.add_row(key, value)
        console.print(table)


# What save_resolved_config wrote in this process: (file, its text before or None, folders it created).
_written_configs: list[tuple[Path, str | None, list[Path]]] = []


def save_resolved_config(cfg) -> None:
    """Write runs/<name>/config.yaml: the resolved config of the last command (re-runnable with --config).

    If the command then fails, ``cli.main`` calls `undo_resolved_config`: a failed command leaves the
    run's config.yaml as it was (or absent), not the config of a run that did not happen.
    """
    from vlmppo.config import config_to_yaml, run_dir
    from vlmppo.io import atomic_write_text

    path = run_dir(cfg) / "config.yaml"
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    previous = path.read_text(encoding="utf-8") if path.is_file() else None
    atomic_write_text(path, config_to_yaml(cfg))
    _written_configs.append((path, previous, created))


def undo_resolved_config() -> None:
    """Put back the config.yaml files this process wrote as they were, and remove the run folders it
    created for them if nothing else was written there."""
    from contextlib import suppress

    from vlmppo.errors import VlmppoError
    from vlmppo.io import atomic_write_text

    while _written_configs:
        path, previous, created = _written_configs.pop()
        with suppress(OSError, VlmppoError):
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write_text(path, previous)
        for folder in created:  # innermost first; rmdir leaves a folder that is not empty
            with suppress(OSError):
                folder.rmdir()


@contextmanager
def progress_bar(description: str):
    """A Rich progress bar on a terminal; plain lines otherwise. Yields ``advance(done, total, status="")``.

    Plain lines come about every 10%, or at every call that passes a status (PPO's per-update line, which
    is what a SLURM log should show).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vlmppo.console import console

    if not console.is_terminal:
        last = {"tenth": -1}

        def plain(done: int, total: int, status: str = "") -> None:
            tenth = (10 * done) // max(total, 1)
            if status or tenth != last["tenth"] or done == total:
                last["tenth"] = tenth
                console.print(
                    f"{description}: {done}/{total}" + (f" · {status}" if status else ""),
                    markup=False,
                    soft_wrap=True,
                )

        yield plain
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=None, status="")

        def advance(done: int, total: int, status: str = "") -> None:
            progress.update(task, completed=done, total=total, status=status)

        yield advance


def summary(message: str, out_dir) -> None:
    from vlmppo.console import console

    console.print(f"[green]done:[/green] {message}\n  output: {out_dir}", markup=True)


def print_preprocess_summary(result) -> None:
    """Counts kept and dropped for each reason, and the action histogram."""
    from rich.table import Table

    from vlmppo.console import console

    table = Table(title="preprocess", title_justify="left", show_header=False)
    table.add_row("train examples", str(result.train))
    table.add_row("val examples", str(result.val))
    for reason, count in sorted(result.dropped.items()):
        table.add_row(f"dropped: {reason}", str(count))
    if result.skipped_lines:
        table.add_row("corrupt lines skipped", str(len(result.skipped_lines)))
    for action, count in sorted(result.actions.items(), key=lambda kv: -kv[1]):
        table.add_row(f"action {action!r}", str(count))
    console.print(table)
    summary(f"wrote {result.train} train and {result.val} val examples", result.out_dir)
