"""Options shared by the stage commands, and the config/plan helpers they call.

Nothing here imports torch: ``vlmppo <cmd> --help`` must stay instant.
"""

from __future__ import annotations

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


def stage_not_built(stage: str, issue: int) -> None:
    from vlmppo.errors import NotBuiltYet

    raise NotBuiltYet(
        f"`vlmppo {stage}` is not built yet in this version of vlmppo (tracked as issue {issue}); "
        "nothing was run or written. `--dry-run` already prints the resolved config and the plan."
    )
