"""`vlmppo env`: versions for bug reports; `env list` and `env show` to see what the model sees."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmppo.commands._common import examples

app = typer.Typer(
    help="Print versions (for bug reports); list environments; show an env's first frame and prompt.",
    invoke_without_command=True,
    epilog=examples(
        "vlmppo env", "vlmppo env list", "vlmppo env show gym_cards/NumberLine-v0 --out frame.png"
    ),
)


@app.callback()
def versions(ctx: typer.Context):
    """Versions of python, torch, transformers, peft, accelerate, deepspeed and the GPUs."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from vlmppo.console import console
    from vlmppo.sysinfo import environment_report

    table = Table(show_header=False, title="vlmppo environment", title_justify="left")
    for key, value in environment_report().items():
        table.add_row(key, value)
    console.print(table)


@app.command("list", epilog=examples("vlmppo env list"))
def list_():
    """Registered environments with their action sets, the installed task plugins included."""
    from rich.table import Table

    from vlmppo.console import console
    from vlmppo.envs import list_envs

    table = Table(title="environments", title_justify="left")
    for column in ("id", "family", "actions", "frame"):
        table.add_column(column, overflow="fold")
    for row in list_envs():
        size = row.get("frame_size")
        frame = (
            f"{size[1]}x{size[0]}" if isinstance(size, (list, tuple)) and len(size) >= 2 else str(size or "")
        )
        actions = f"broken: {row['error']}" if row.get("error") else ", ".join(row["legal_actions"])
        table.add_row(str(row["id"]), str(row["family"]), actions, frame)
    console.print(table)


@app.command(
    epilog=examples(
        "vlmppo env show gym_cards/Points24-v0 --seed 3 --out p24.png",
        "vlmppo env show gym_cards/Points24-v0 --prompt rl4vlm",
        "vlmppo env show MiniGrid-DoorKey-6x6-v0",
        "vlmppo env show mypkg.envs:MazeEnv --adapter mypkg.adapters:MazeAdapter",
    )
)
def show(
    env_id: Annotated[
        str,
        typer.Argument(help="Environment id, e.g. gym_cards/NumberLine-v0, a plugin's id, or module:Name."),
    ],
    seed: Annotated[int, typer.Option(help="Reset seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Where to write the first frame (PNG).")] = Path("frame.png"),
    prompt: Annotated[
        str,
        typer.Option(
            help="Prompt style (env.prompt): rl4vlm, rl4vlm_action_only (gym_cards only), cot, action_only."
        ),
    ] = "cot",
    adapter: Annotated[
        str | None,
        typer.Option(
            help="Task plugins: the adapter as module:Class (env.adapter); default: the plugin's own."
        ),
    ] = None,
):
    """Write the env's first frame as a PNG and print the prompt the model gets with it."""
    from vlmppo.console import console
    from vlmppo.envs import PROMPT_STYLES, render_first_frame
    from vlmppo.errors import EnvError

    if prompt not in PROMPT_STYLES:
        raise EnvError(
            f"Unknown prompt style --prompt {prompt!r}.", hint=f"Use one of {', '.join(PROMPT_STYLES)}."
        )
    text = render_first_frame(env_id, seed, out, prompt=prompt, adapter=adapter)
    console.print(f"[bold]frame:[/bold] {out}\n[bold]prompt:[/bold]", markup=True)
    console.print(text, markup=False, highlight=False, soft_wrap=True)
