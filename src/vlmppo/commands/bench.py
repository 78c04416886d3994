"""`vlmppo bench`: rollout and update throughput and peak memory of the PPO loop for a preset.

Imports no torch at module level: the engine (``vlmppo.benchmark``) loads inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmppo.commands._common import ConfigOpt, OverridesArg, PresetOpt, examples, resolve_config

# Kept here (not imported from vlmppo.models.shapes) so that --help stays free of heavy imports.
SHAPE_HELP = (
    "Model to measure: 'tiny' (the family's tiny random model), 'qwen2-vl-2b' or 'llava-next-mistral-7b' (the "
    "released config, random bf16 weights; needs a GPU). Default: the preset's model.path."
)


def bench(
    overrides: OverridesArg = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    shape: Annotated[str | None, typer.Option("--shape", help=SHAPE_HELP)] = None,
    n_envs: Annotated[
        str,
        typer.Option(
            "--n-envs", help="Comma-separated env counts; 1 (batch-1 sequential baseline) is always run."
        ),
    ] = "1,8,32",
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats of each measurement.")] = 3,
    decoders: Annotated[
        str | None,
        typer.Option(
            "--decoders",
            help="Comma-separated decoders for the batched rows: generate (transformers), static (static KV "
            "cache + CUDA graphs). Default: the config's model.decoder.",
        ),
    ] = None,
    answer_lengths: Annotated[
        str,
        typer.Option(
            "--answer-lengths",
            help="'forced' (every answer ppo.max_new_tokens long) or LOW-HIGH: each answer ends after a "
            "length drawn in that range (fixed seed), as trained policies answer.",
        ),
    ] = "forced",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write FILE.json and FILE.md (default: runs/<run.name>/bench/bench-<shape>)."
        ),
    ] = None,
):
    """Measure env-steps/s and generated tokens/s (batch-1 sequential vs batched), update tokens/s, peak GiB."""
    from vlmppo.benchmark.options import (
        check_repeats,
        check_shape_device,
        parse_answer_lengths,
        parse_decoders,
        parse_n_envs,
    )
    from vlmppo.models.shapes import get_shape
    from vlmppo.sysinfo import resolve_device

    # Bad values fail here, before a model is loaded (and before torch is imported, unless
    # run.device=auto needs it to look for a GPU).
    counts, repeats = parse_n_envs(n_envs), check_repeats(repeats)
    decoder_list = parse_decoders(decoders) if decoders else None
    span = parse_answer_lengths(answer_lengths)
    if shape is not None and shape != "tiny":
        get_shape(shape)
    cfg = resolve_config(preset, config, overrides)
    check_shape_device(shape, resolve_device(cfg))
    from vlmppo.benchmark.report import write_report
    from vlmppo.benchmark.runner import run_bench
    from vlmppo.config import run_dir
    from vlmppo.console import console

    target = out or run_dir(cfg) / "bench" / f"bench-{shape or 'preset'}"
    result = run_bench(
        cfg,
        shape=shape,
        n_envs=counts,
        repeats=repeats,
        decoders=decoder_list,
        answer_lengths=span,
        on_phase=lambda text: console.print(f"bench: {text}"),
    )
    print_report(result, console)
    json_path, md_path = write_report(result, Path(target))
    console.print(f"[green]done:[/green] wrote {json_path} and {md_path}", markup=True)


def print_report(result, console) -> None:
    """The setup lines, then the rollout and update tables (the rows of ``vlmppo.benchmark.report``)."""
    from rich.table import Table

    from vlmppo.benchmark.report import (
        ROLLOUT_COLUMNS,
        UPDATE_COLUMNS,
        rollout_rows,
        setup_lines,
        training,
        update_row,
    )

    for line in setup_lines(result):
        console.print(line)
    table = Table(title="rollout", title_justify="left")
    for name in ROLLOUT_COLUMNS:
        table.add_column(name, justify="left" if name == "mode" else "right")
    for row in rollout_rows(result):
        table.add_row(*row)
    console.print(table)
    table = Table(title=f"update (forward + backward, {training(result)})", title_justify="left")
    for name in UPDATE_COLUMNS:
        table.add_column(name, justify="right")
    table.add_row(*update_row(result))
    console.print(table)


bench_epilog = examples(
    "vlmppo bench --preset numberline-tiny --n-envs 1,4 --repeats 2",
    "vlmppo bench --preset numberline-qwen --shape qwen2-vl-2b --n-envs 1,32,128 --decoders generate,static "
    "ppo.max_new_tokens=128",
    "vlmppo bench --preset numberline-tiny --decoders static --answer-lengths 3-8 ppo.max_new_tokens=8",
    "vlmppo bench --preset minigrid-doorkey-qwen --out bench/doorkey-h100.json",
)
