"""`vlmppo export`: a checkpoint as a folder that plain transformers/peft load, with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmppo.commands._common import examples

export_epilog = examples(
    "vlmppo export --ckpt runs/numberline-qwen/ppo/checkpoints/last --out numberline-agent",
    "vlmppo export --ckpt runs/numberline-qwen/ppo/checkpoints/last --out merged --merge",
    "vlmppo export --ckpt runs/numberline-qwen/ppo/checkpoints/last --out agent --push-to-hub me/numberline-agent",
)


def export(
    ckpt: Annotated[
        str, typer.Option("--ckpt", help="Checkpoint folder, e.g. runs/NAME/ppo/checkpoints/last.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to write (must be empty unless --overwrite).")],
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Merge the LoRA adapter into its base model (loads the base model)."),
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it holds files.")] = False,
    push_to_hub: Annotated[
        str | None,
        typer.Option("--push-to-hub", help="Also upload the folder to this Hub model repo (user/name)."),
    ] = None,
    private: Annotated[
        bool, typer.Option("--private", help="With --push-to-hub: create the repo private.")
    ] = False,
):
    """Write a checkpoint as a folder that plain transformers/peft load, with a model card (README.md) filled
    from its run: base model, env, preset, the pipeline's stages, eval success beside the baselines, the
    command to reproduce it, one episode's frames."""
    from vlmppo.console import console
    from vlmppo.export import export_checkpoint, push_folder

    result = export_checkpoint(ckpt, out, merge=merge, overwrite=overwrite)
    evaluation = result.record.get("evaluation")
    what = "merged model" if result.merged else ("LoRA adapter" if result.record.get("lora") else "model")
    console.print(
        f"exported the {what} of {result.checkpoint} to {result.out} ({len(result.files)} files)",
        markup=False,
    )
    if merge and not result.merged:
        console.print("  --merge: nothing to merge, the checkpoint is a full model", markup=False)
    if evaluation:
        console.print(f"  card: success {100 * evaluation['success_rate']:.1f}% over {evaluation['episodes']} "
                      f"episodes ({evaluation['name']})", markup=False)  # fmt: skip
    else:
        console.print(
            "  card: no evaluation of this checkpoint in its run (vlmppo eval --ckpt ...)", markup=False
        )
    if push_to_hub:
        url = push_folder(result.out, push_to_hub, private=private)
        console.print(f"  pushed to {url}", markup=False)
