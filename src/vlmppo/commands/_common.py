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


def checkpoint_config(ckpt: str | None) -> tuple[Path, list[str]]:
    """For ``eval --ckpt PATH`` without ``--preset``/``--config``: the ``config.yaml`` the checkpoint
    carries, and overrides that place the evaluation in the run the checkpoint belongs to.

    A checkpoint at ``<output_dir>/<name>/<stage>/checkpoints/<N>`` gets ``run.output_dir`` and
    ``run.name`` from where it lies, not from its config: the run may have been moved or copied, or the
    command started from another folder, and the report wants that run's learning curves and baselines.

    Raises:
        ConfigError: ``--ckpt`` is missing, or names no folder with a ``config.yaml``.
    """
    import json
    import os

    from vlmppo.errors import ConfigError

    config = Path(ckpt) / "config.yaml" if ckpt else None
    if config is None or not config.is_file():
        where = f"--ckpt {ckpt} has no config.yaml" if ckpt else "no --ckpt was given"
        raise ConfigError(
            f"No config given, and {where} to take it from.",
            hint="Pass --preset NAME (see `vlmppo presets list`) or --config FILE, or --ckpt with a checkpoint "
            "folder written by `vlmppo sft` or `vlmppo ppo` (it carries its config.yaml).",
        )
    folder = Path(os.path.abspath(ckpt))  # abspath, not resolve: `last` stays inside its run
    if folder.parent.name != "checkpoints" or len(folder.parents) < 4:
        return config, []
    run_root = folder.parents[2]
    output_dir = str(run_root.parent)
    if Path.cwd() in run_root.parents:
        output_dir = os.path.relpath(output_dir)
    # JSON strings are YAML strings: a path like `yes` or `1e3` stays a path.
    return config, [f"run.output_dir={json.dumps(output_dir)}", f"run.name={json.dumps(run_root.name)}"]


def check_quantization_here(cfg) -> None:
    """``model.quantization`` on a machine without CUDA (or bitsandbytes): one clear error before anything
    is written or loaded."""
    if not cfg.model.quantization:
        return
    from vlmppo.models.quantization import check_quantization
    from vlmppo.sysinfo import resolve_device

    check_quantization(cfg.model, resolve_device(cfg))


def gpu_memory_row(cfg, stage: str = "ppo", world: int = 1) -> str:
    """The PPO (or SFT) memory estimate (per GPU of ``world`` data-parallel ranks), or why there is none (the
    model's config is not available offline)."""
    from vlmppo.memory import estimate_ppo_memory, estimate_sft_memory

    est = estimate_sft_memory(cfg) if stage == "sft" else estimate_ppo_memory(cfg, world=world)
    if est is None:
        return (
            f"unknown: no config for {cfg.model.path} offline (point model.path at a local model folder "
            "to get an estimate)"
        )
    return est.describe()


# The stages whose steps a model answers, with the setting that bounds an answer's length.
ANSWER_LENGTH_KEYS = {"ppo": "ppo.max_new_tokens", "eval": "eval.max_new_tokens"}


def prompt_budget_row(cfg, stage: str) -> str:
    """A step's longest input (frames with ``env.history``, image tokens, text, answers) against the model's
    context; ConfigError when it does not fit. The figures come from the model's processor where it is
    available offline, else from its config (an estimate)."""
    from vlmppo.memory import estimate_prompt_budget
    from vlmppo.models.budget import config_prompt_budget

    key = ANSWER_LENGTH_KEYS[stage]
    section, field = key.split(".")
    max_new_tokens = getattr(getattr(cfg, section), field)
    budget = config_prompt_budget(cfg, max_new_tokens) or estimate_prompt_budget(cfg, max_new_tokens)
    if budget is None:
        return f"unknown: neither the processor nor the config of {cfg.model.path} is available offline"
    budget.check(cfg.model.path, key)
    return budget.describe()


def plan_rows(cfg, stage: str, world: int = 1) -> list[tuple[str, str]]:
    """The rows ``--dry-run`` prints for ``stage``: the config's derived numbers, for PPO the GPU memory
    estimate, and for the stages a model answers in, the prompt budget."""
    from vlmppo.config.plan import stage_plan

    estimated = stage in ("ppo", "sft") and (stage == "ppo" or cfg.run.device != "cpu")
    memory = gpu_memory_row(cfg, stage, world) if estimated else None
    rows = stage_plan(cfg, stage, gpu_memory=memory, world=world)
    if stage in ANSWER_LENGTH_KEYS:
        rows.append(("prompt budget", prompt_budget_row(cfg, stage)))
    return rows


def print_dry_run(cfg, *stages: str, world: int = 1) -> None:
    """Print the resolved YAML and each stage's derived plan (``world``: processes of a launch)."""
    from rich.table import Table

    from vlmppo.config import config_to_yaml
    from vlmppo.console import console, print_code

    print_code(config_to_yaml(cfg), "yaml")
    for stage in stages:
        table = Table(title=f"plan: vlmppo {stage}", show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        for key, value in plan_rows(cfg, stage, world):
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
def progress_bar(description: str, waiting: str = ""):
    """A Rich progress bar on a terminal; plain lines otherwise. Yields ``advance(done, total, status="")``.

    Args:
        description: What is counted, e.g. ``"sft: optimizer steps"``.
        waiting: What the stage does before its first unit of work (e.g. building and loading a model),
            shown until the first ``advance`` so a bar at ``0/?`` says why it waits.

    Both show the time elapsed and an estimate of the time left. Plain lines come about every 10%, or at
    every call that passes a status (PPO's per-update line, which is what a SLURM log should show).
    Library progress bars and deprecation chatter are silenced while the bar runs (`vlmppo.quiet`).
    """
    from vlmppo.console import console
    from vlmppo.quiet import quiet_libraries

    with quiet_libraries():
        if not console.is_terminal:
            yield PlainProgress(description, waiting, console)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            time_column(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(description, total=None, status=waiting)

            def advance(done: int, total: int, status: str = "") -> None:
                progress.update(task, completed=done, total=total, status=status)

            yield advance


def time_column():
    """A Rich progress column: ``0:00:12 elapsed, 0:00:30 left`` (the time left once Rich knows the total
    and a rate; just the elapsed time before)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class TimeColumn(ProgressColumn):
        def render(self, task) -> Text:
            elapsed = task.finished_time if task.finished else task.elapsed
            text = f"{format_seconds(elapsed or 0)} elapsed"
            if not task.finished and task.time_remaining is not None:
                text += f", {format_seconds(task.time_remaining)} left"
            return Text(text, style="progress.elapsed")

    return TimeColumn()


class PlainProgress:
    """Progress as plain lines (logs, pipes): ``sft: optimizer steps: 40/100 · 0:00:12 left · loss 0.31``.

    The time left is extrapolated from the rate since the first call, so loading the model before the
    first step does not count as work.
    """

    def __init__(self, description: str, waiting: str, console, clock=None):
        import time

        self.description, self.console = description, console
        self.clock = clock or time.monotonic
        self.first: tuple[int, float] | None = None
        self.tenth = -1
        if waiting:
            self._print(f"{description}: {waiting}")

    def __call__(self, done: int, total: int, status: str = "") -> None:
        left = self.seconds_left(done, total)
        tenth = (10 * done) // max(total, 1)
        if status or tenth != self.tenth or done == total:
            self.tenth = tenth
            parts = [f"{self.description}: {done}/{total}"]
            if left is not None and done < total:
                parts.append(f"{format_seconds(left)} left")
            self._print(" · ".join(parts + ([status] if status else [])))

    def seconds_left(self, done: int, total: int) -> float | None:
        now = self.clock()
        if self.first is None:
            self.first = (done, now)
            return None
        done0, t0 = self.first
        if done <= done0:
            return None
        return (now - t0) / (done - done0) * max(total - done, 0)

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def format_seconds(seconds: float) -> str:
    """``0:01:05`` (as Rich's bars show time)."""
    import datetime

    return str(datetime.timedelta(seconds=int(round(seconds))))


def model_wait(cfg) -> str:
    """What a stage waits for before its first step: loading the model, or building a tiny one first."""
    from vlmppo.models.tiny import built_size, tiny_model_built

    path = cfg.model.path
    size = built_size(path)
    if size is not None:
        family = path.partition(":")[2]
        if not tiny_model_built(family, size):
            return f"building the {size.name} {family} model (first use only), then loading it"
    return f"loading {path}"


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


def print_comparison(paths: list[str]) -> None:
    """``eval --compare``: one column per evaluation, one row per metric."""
    from rich.table import Table

    from vlmppo.console import console
    from vlmppo.eval.compare import compare_rows

    headers, rows = compare_rows(paths)
    table = Table(title="vlmppo eval --compare", title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, style="bold" if i == 0 else None, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def success_table(agent: dict, baselines: dict):
    """The agent's success rate with its 95% interval beside the baselines', and where it stands."""
    from rich.table import Table

    from vlmppo.eval.metrics import BASELINES
    from vlmppo.eval.report import standing

    caption = standing(agent, baselines) if baselines else "No expert or random baseline of this task."
    table = Table(title="success (eval)", title_justify="left", caption=caption, caption_justify="left")
    for column in ("policy", "episodes", "success", "95% CI (Wilson)"):
        table.add_column(column)
    entries = [(f"{agent['name']} (agent)", agent)] + [(p, baselines[p]) for p in BASELINES if p in baselines]
    for label, m in entries:
        low, high = m["success_ci95"]
        table.add_row(label, str(m["episodes"]), f"{m['success_rate']:.1%}", f"{low:.1%} - {high:.1%}")
    return table
