"""SFT checkpoints: what `train_sft` writes, how a resume finds and reloads one, and the ``final/`` export.

A numbered checkpoint (``sft/checkpoints/NNNNNN/``) has the same layout as PPO's: the PEFT adapter folder
(or a full ``save_pretrained`` folder when ``model.lora`` is null), the processor, ``config.yaml``,
``vlmppo.json`` (stage, family, base model, counters) and ``trainer_state.pt`` (optimizer, RNG streams,
data position, counters). ``final/`` is a copy of the last one without the trainer state, plus the final
metrics: the folder to hand to ``ppo.init_from`` or to plain peft.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import yaml

from vlmppo.checkpoints import (
    META,
    check_family,
    latest_checkpoint,
    read_meta,
    resolve_checkpoint,
    resume_auto,
)
from vlmppo.config import config_to_yaml, run_dir
from vlmppo.errors import CheckpointError


def checkpoints_dir(cfg) -> Path:
    return run_dir(cfg) / "sft" / "checkpoints"


def find_resume(cfg, resume: str | None) -> tuple[Path | None, list[str]]:
    """``None``: start fresh (CheckpointError if this run already has SFT checkpoints, which a fresh run
    would mix with its own); ``auto``: the newest whole SFT checkpoint, or None; else that checkpoint.
    In every case a checkpoint of another model family is a CheckpointError.

    Returns:
        ``(checkpoint or None, notes)``: a note per newer checkpoint ``auto`` skipped as damaged.
    """
    root = checkpoints_dir(cfg)
    if not resume:
        existing = latest_checkpoint(root)
        if existing is not None:
            raise CheckpointError(
                f"{root} already holds SFT checkpoints (newest: {existing.name}); a fresh run would mix its "
                "checkpoints with them.",
                hint="Pass --resume auto to continue that run, set run.name to start another one, or delete "
                "the folder.",
            )
        return None, []
    notes = []
    if resume == "auto":
        path, notes = resume_auto(root, "sft")
    else:
        path = resolve_checkpoint(run_dir(cfg), resume, key="--resume", hashes=True)
    if path is not None:
        check_family(path, cfg.model.family)
    return path, notes


def load_weights(cfg, path: Path, device):
    """The model to continue training from checkpoint ``path`` (same module tree as a fresh run, so the
    optimizer state lines up); returns ``(loaded, base_model)``."""
    from vlmppo.models import load_model

    meta = read_meta(path)
    adapter_file = path / "adapter_model.safetensors"
    if cfg.model.lora is None:
        if adapter_file.is_file():
            raise CheckpointError(
                f"{path} holds a LoRA adapter, but model.lora is null (full fine-tuning).",
                hint="Resume with the LoRA settings the checkpoint was trained with.",
            )
        loaded = load_model(
            cfg.model.model_copy(update={"path": str(path)}), device=device, for_training=True
        )
        return loaded, meta.get("base_model", str(path))
    if not adapter_file.is_file():
        raise CheckpointError(
            f"{path} has no adapter_model.safetensors, but model.lora is set.",
            hint="Resume a full fine-tuning run with model.lora=null, or point --resume at an SFT LoRA checkpoint.",
        )
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from vlmppo.checkpoints import base_model_for

    base = base_model_for(path, meta, cfg.model)
    loaded = load_model(cfg.model.model_copy(update={"path": base}), device=device, for_training=True)
    try:
        # Read on the host, then let peft copy into the parameters wherever they live: safetensors
        # rejects device strings like "cpu:0" that accelerate hands out to CPU ranks.
        result = set_peft_model_state_dict(loaded.model, load_file(str(adapter_file), device="cpu"))
    except RuntimeError as exc:  # shape mismatch: another rank or other target modules
        raise CheckpointError(
            f"The adapter in {path} does not fit model.lora ({str(exc).splitlines()[0]}).",
            hint="Resume with the LoRA settings (r, target_modules) the checkpoint was trained with.",
        ) from None
    if result.unexpected_keys:
        raise CheckpointError(
            f"The adapter in {path} has weights this model.lora does not create "
            f"({', '.join(result.unexpected_keys[:3])}, ...).",
            hint="Resume with the LoRA settings the checkpoint was trained with.",
        )
    return loaded, base


def config_changes(path: Path, cfg, sections: tuple[str, ...] = ("model", "sft")) -> list[str]:
    """Settings of ``sections`` that differ between the checkpoint's config.yaml and this run, as
    ``key: old -> new`` (LeRobot-style resume warning: the run continues, but the user should know)."""
    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return []
    saved = yaml.safe_load(saved_file.read_text()) or {}
    now = yaml.safe_load(config_to_yaml(cfg))

    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    changes = []
    for section in sections:
        a, b = flat(saved.get(section), f"{section}."), flat(now.get(section), f"{section}.")
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changes.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return changes


def drop_final_rows(metrics: Path) -> None:
    """Remove the ``final: true`` rows of an earlier end of this run from ``metrics.jsonl`` (atomically)."""
    from vlmppo.io import atomic_write_text

    if not metrics.is_file():
        return
    kept = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("final"):
                continue
        except json.JSONDecodeError:
            break  # a torn tail: the Tracker cuts it too
        kept.append(line)
    atomic_write_text(metrics, "".join(f"{line}\n" for line in kept))


def write_final(checkpoint: Path, extra_meta: dict) -> Path:
    """Copy ``checkpoint`` (minus ``trainer_state.pt``) to ``checkpoints/final`` atomically, with
    ``extra_meta`` (final metrics) merged into its ``vlmppo.json``."""
    root = checkpoint.parent
    final, tmp = root / "final", root / f".final.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
        meta = {**read_meta(checkpoint), **extra_meta, "final": True, "from_checkpoint": checkpoint.name}
        meta["files"] = {k: v for k, v in (meta.get("files") or {}).items() if (tmp / k).is_file()}
        (tmp / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if final.exists():
            old = root / f".final.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"Could not write {final} ({exc.strerror or exc}).",
            hint=f"Free disk space or fix permissions; {checkpoint} holds the same weights.",
        ) from None
    return final
