"""`vlmppo model init|info`: write a tiny or small random model; describe a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmppo.commands._common import examples
from vlmppo.registry import FAMILIES

app = typer.Typer(
    help="Build tiny or small random models and describe checkpoints.",
    no_args_is_help=True,
    epilog=examples(
        "vlmppo model init qwen2-vl --out tiny-qwen", "vlmppo model info tiny-qwen --image-size 300"
    ),
)


@app.command(
    epilog=examples(
        "vlmppo model init qwen2-vl --out tiny-qwen",
        "vlmppo model init llava-next --out tiny-llava",
        "vlmppo model init qwen2-vl --size small --out small-qwen",
    )
)
def init(
    family: Annotated[str, typer.Argument(help=" | ".join(FAMILIES) + ".")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write the model, tokenizer and processor to.")
    ],
    size: Annotated[
        str, typer.Option(help="tiny (~200k parameters, tests on a CPU) or small (~14M, learning on a GPU).")
    ] = "tiny",
):
    """Write a random model of a family (tiny: a few layers, hidden <= 128; small: ~14M parameters, 168 px images)
    with a locally trained tokenizer."""
    from vlmppo.console import console
    from vlmppo.errors import ModelError
    from vlmppo.models.adapter import SIZES

    if family not in FAMILIES:
        raise ModelError(f"Unknown model family '{family}'. Supported families: {', '.join(FAMILIES)}.")
    if size not in SIZES:
        raise ModelError(f"Unknown model size '{size}'. Sizes: {', '.join(SIZES)}.")
    import shlex

    from vlmppo.models import build_tiny_model

    path = build_tiny_model(family, out, SIZES[size])
    override = shlex.quote(f"model.path={path}")  # pasted onto a command line: one word
    console.print(f"wrote a {size} random {family} model to {path}; use it with {override}", markup=False)


@app.command(
    epilog=examples(
        "vlmppo model info tiny:qwen2-vl", "vlmppo model info /models/Qwen2-VL-2B-Instruct --image-size 448"
    )
)
def info(
    path: Annotated[str, typer.Argument(help="Model folder, hub id, or tiny:<family>.")],
    image_size: Annotated[int, typer.Option(help="Image side in pixels for the image-token count.")] = 300,
):
    """Family, parameter counts (total / trainable with the default LoRA) and image tokens per image."""
    from rich.table import Table

    from vlmppo.console import console
    from vlmppo.models import model_info

    table = Table(show_header=False, title=f"model {path}", title_justify="left")
    for key, value in model_info(path, image_size=image_size).items():
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
