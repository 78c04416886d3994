"""`vlmppo presets list|show|copy|schema`: discover, read and copy the shipped presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmppo.commands._common import examples

app = typer.Typer(
    help="List, show and copy the shipped presets; print the config's JSON schema.",
    no_args_is_help=True,
    epilog=examples(
        "vlmppo presets list",
        "vlmppo presets show numberline-tiny",
        "vlmppo presets copy numberline-qwen my.yaml",
    ),
)


@app.command("list", epilog=examples("vlmppo presets list"))
def list_():
    """Every shipped preset: name, env, model family and what it is for."""
    from rich.table import Table

    from vlmppo.config.presets import list_presets
    from vlmppo.console import console

    table = Table(title="vlmppo presets", title_justify="left")
    for column in ("name", "env", "family", "purpose"):
        table.add_column(column, overflow="fold")
    for info in list_presets():
        table.add_row(info.name, info.env_id, info.family, info.purpose)
    console.print(table)


@app.command(epilog=examples("vlmppo presets show numberline-tiny", "vlmppo presets show ./my-preset.yaml"))
def show(name: Annotated[str, typer.Argument(help="Preset name or path.")]):
    """Print a preset's YAML (with its header: purpose, hardware, measured time and memory)."""
    from vlmppo.config.presets import find_preset

    typer.echo(find_preset(name).read_text(encoding="utf-8"), nl=False)


@app.command(
    epilog=examples(
        "vlmppo presets copy numberline-qwen my-numberline.yaml",
        "vlmppo presets copy probe-color-tiny configs/",
    )
)
def copy(
    name: Annotated[str, typer.Argument(help="Preset to copy.")],
    dest: Annotated[Path, typer.Argument(help="File or existing folder to copy it to.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
):
    """Copy a preset to edit it; run it with `--preset PATH`."""
    import shlex

    from vlmppo.config.presets import copy_preset
    from vlmppo.console import console

    target = copy_preset(name, dest, force=force)
    paste = shlex.join(["vlmppo", "ppo", "--preset", str(target)])  # a line to paste: quoted
    console.print(f"wrote {target}; run it with: {paste}", markup=False, soft_wrap=True)


@app.command(epilog=examples("vlmppo presets schema > vlmppo-schema.json"))
def schema():
    """Print the config's JSON schema (every key, type, default and help text)."""
    import json

    from vlmppo.config.schema import Config

    typer.echo(json.dumps(Config.model_json_schema(), indent=2))
