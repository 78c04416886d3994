"""``vlmppo export``: a checkpoint as a folder that plain transformers/peft load, with its model card.

The folder holds the adapter (``adapter_config.json`` + ``adapter_model.safetensors``) or, with ``merge``,
the merged model (``save_pretrained``), the processor and tokenizer files, ``README.md`` (the card),
``assets/`` (one evaluated episode), and ``vlmppo/`` (the run's config, the checkpoint's record, every
stage's manifest). What only training needs (optimizer state, the value head) is left out. Written into a
temp folder and moved into place, so a failed export leaves nothing half written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vlmppo.checkpoints import read_meta, resolve_checkpoint
from vlmppo.errors import CheckpointError, ResultExistsError
from vlmppo.export.card import render_card
from vlmppo.export.record import read_record, run_root_of
from vlmppo.integrity import META
from vlmppo.io import atomic_replace_dir, atomic_write_json, atomic_write_text, storage_error
from vlmppo.registry import stage_info

# Training-only files, and the files the export writes itself.
LEFT_OUT = {"trainer_state.pt", "value_head.safetensors", META, "README.md", "config.yaml"}
# The weights a merged export replaces with the merged model's.
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"}


@dataclass(frozen=True)
class ExportResult:
    out: Path
    checkpoint: Path
    merged: bool
    record: dict
    files: list[str]


def _check_out(out: Path, ckpt: Path, overwrite: bool) -> None:
    if out.resolve() == ckpt or ckpt in out.resolve().parents:
        raise ResultExistsError(
            f"--out {out} is inside the checkpoint {ckpt}.", hint="Export to another folder."
        )
    if out.exists() and not out.is_dir():
        raise ResultExistsError(f"--out {out} is a file.", hint="Give a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ResultExistsError(
            f"--out {out} already holds files.", hint="Pass --overwrite to replace it, or give a new folder."
        )


def _manifests(record: dict, root: Path | None) -> dict:
    """Every stage's full manifest (data and eval stages) or checkpoint record (training stages)."""
    found: dict = {}
    if root is None:
        return found
    for stage in record["stages"]:
        name = stage["stage"]
        info = stage_info(name)
        path = (root / name / "checkpoints" / stage["checkpoint"] / META) if stage.get("checkpoint") else (
            root / info.folder / "manifest.json")  # fmt: skip
        if path.is_file():
            found[name] = json.loads(path.read_text(encoding="utf-8"))
    evaluation = record.get("evaluation")
    for row in [*([evaluation] if evaluation else []), *record.get("baselines", [])]:
        path = root / "eval" / row["name"] / "manifest.json"
        if path.is_file():
            found[f"eval/{row['name']}"] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _copy_weights(ckpt: Path, tmp: Path, merged: bool) -> None:
    for path in sorted(ckpt.iterdir()):
        if path.is_file() and path.name not in LEFT_OUT and not (merged and path.name in ADAPTER_FILES):
            shutil.copy2(path, tmp / path.name)


def _merge_into(ckpt: Path, tmp: Path) -> None:
    """Apply the LoRA adapter to its base model and save the merged model and processor into ``tmp``."""
    from vlmppo.checkpoints import load_for_inference
    from vlmppo.config import load_config

    cfg = load_config(config_file=ckpt / "config.yaml", overrides=["run.device=cpu"])
    loaded = load_for_inference(cfg, str(ckpt), device="cpu")
    model = loaded.model.merge_and_unload()
    model.save_pretrained(tmp)
    loaded.processor.save_pretrained(tmp)


def _frames(record: dict, tmp: Path) -> list[str]:
    evaluation = record.get("evaluation") or {}
    shown = []
    for key, name in (("episode_frames", "episode.png"), ("episode_gif", "episode.gif")):
        for source in evaluation.get(key) or []:
            (tmp / "assets").mkdir(exist_ok=True)
            shutil.copy2(source, tmp / "assets" / name)
            shown.append(f"assets/{name}")
    return shown


def export_checkpoint(
    ckpt: str | Path, out: str | Path, *, merge: bool = False, overwrite: bool = False
) -> ExportResult:
    """Write checkpoint ``ckpt`` to ``out`` as a loadable folder with a model card.

    Args:
        ckpt: A checkpoint folder (``runs/NAME/ppo/checkpoints/last``, a numbered one, SFT's ``final``).
        out: The folder to write (created; must be empty unless ``overwrite``).
        merge: Merge a LoRA adapter into its base model (loads the base model; a full fine-tune is already whole).
        overwrite: Replace ``out`` if it holds files.

    Raises:
        CheckpointError: ``ckpt`` is not a whole checkpoint.
        ResultExistsError: ``out`` holds files and ``overwrite`` is False, or lies inside ``ckpt``.
    """
    path = resolve_checkpoint(Path.cwd(), str(ckpt), key="--ckpt", choices="a checkpoint folder", hashes=True)
    if not (path / "config.yaml").is_file() and not read_meta(path):
        raise CheckpointError(f"{path} is not a vlmppo checkpoint: it has no config.yaml or {META}.",
                              hint="Export a folder written by `vlmppo sft` or `vlmppo ppo`.")  # fmt: skip
    out = Path(out).expanduser()
    _check_out(out, path, overwrite)
    record = read_record(path)
    merged = merge and (path / "adapter_config.json").is_file()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "vlmppo").mkdir(parents=True)
        _copy_weights(path, tmp, merged)
        if merged:
            _merge_into(path, tmp)
        frames = _frames(record, tmp)
        if (path / "config.yaml").is_file():
            shutil.copy2(path / "config.yaml", tmp / "vlmppo" / "config.yaml")
        atomic_write_json(tmp / "vlmppo" / "record.json", {**record, "merged": merged,
                                                           "manifests": _manifests(record, run_root_of(path))})  # fmt: skip
        atomic_write_text(tmp / "README.md", render_card(record, merged=merged, frames=frames))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_replace_dir(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(out, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, path, merged, record, files)
