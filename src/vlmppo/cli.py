"""The `vlmppo` command line: the one list of commands, and the one error handler.

Command modules import only Typer at module level; torch and transformers load inside the command
that needs them, so `vlmppo --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from vlmppo import __version__
from vlmppo.commands import bench, env, export, model, plan, presets, slurm, stages
from vlmppo.registry import STAGES

app = typer.Typer(
    name="vlmppo",
    help="Fine-tune vision-language models as agents: collect -> label -> preprocess -> sft -> ppo -> eval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    epilog=stages.examples(
        "vlmppo presets list",
        "vlmppo pipeline --preset probe-color-tiny",
        "vlmppo ppo --preset minigrid-doorkey-qwen --dry-run",
    ),
)

# One command per stage, in pipeline order, then the pipeline itself.
for _name in (*STAGES, "pipeline"):
    _command, _epilog = stages.COMMANDS[_name]
    app.command(_name, epilog=_epilog)(_command)
app.command("bench", epilog=bench.bench_epilog)(bench.bench)
app.command("export", epilog=export.export_epilog)(export.export)
app.command("plan", epilog=plan.plan_epilog)(plan.plan)
app.add_typer(slurm.app, name="slurm")
app.add_typer(presets.app, name="presets")
app.add_typer(model.app, name="model")
app.add_typer(env.app, name="env")


def _version(value: bool):
    if value:
        typer.echo(f"vlmppo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
):
    """Fine-tune vision-language models as agents."""


def main() -> None:
    """Console-script entry point: user errors become one clear paragraph and a non-zero exit; a command
    that fails (however) leaves the run's config.yaml as it found it."""
    from vlmppo.commands._common import undo_resolved_config

    try:
        _main()
    except SystemExit as exc:
        if exc.code not in (0, None):
            undo_resolved_config()
        raise
    except BaseException:
        undo_resolved_config()
        raise


def _main() -> None:
    from vlmppo.errors import VlmppoError
    from vlmppo.sysinfo import record_command

    record_command(sys.argv[1:])
    try:
        app()
    except VlmppoError as exc:
        if os.environ.get("VLMPPO_DEBUG") == "1":
            raise
        from vlmppo.console import err_console

        text = exc.message if exc.hint is None else f"{exc.message} {exc.hint}"
        err_console.print(f"[bold red]error:[/bold red] {text}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        # A file the user's setup makes unwritable or unreadable (a run folder under a file, no
        # permission, a full disk): their problem to fix, not a traceback. Other OSErrors are bugs.
        if not filesystem_problem(exc) or os.environ.get("VLMPPO_DEBUG") == "1":
            raise
        from vlmppo.console import err_console

        where = f" {exc.filename}" if exc.filename else ""
        text = (
            f"Could not access{where}: {exc.strerror or exc}. Check that the folder exists, is writable and has "
            "free space (run.output_dir sets where runs go); files already written are intact (they are "
            "replaced atomically)."
        )
        err_console.print(f"[bold red]error:[/bold red] {text}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(1)


def filesystem_problem(exc: OSError) -> bool:
    """Errors of the file system the user can fix, as opposed to OSErrors of a bug or a library."""
    import errno

    fixable = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EFBIG}
    return exc.errno in fixable or (exc.filename is not None and exc.errno in {errno.ENOENT, errno.EISDIR})
