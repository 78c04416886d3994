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
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from vlmppo.sft.run import SftRun


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
    ``key: old -> new`` (LeRobot-style resume warning: the run continues, but the user should know), by
    `vlmppo.config.compare`'s rule: a setting newer than the checkpoint at its default, and those of
    ``WHERE_IT_STOPS``, are not changes."""
    from vlmppo.config.compare import section_changes

    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        return []
    saved = yaml.safe_load(saved_file.read_text()) or {}
    return section_changes(saved, yaml.safe_load(config_to_yaml(cfg)), sections)


def save_run(run: SftRun, row: dict) -> Path:
    """A numbered checkpoint of ``run`` at its current step, atomically (every rank takes part under
    DeepSpeed: each writes its shard of the optimizer state, ZeRO-3 gathers the weights on all ranks)."""
    from vlmppo.checkpoints import protected_checkpoints, save_checkpoint
    from vlmppo.sft.steps import sum_over_ranks
    from vlmppo.train_state import save_trainer_state

    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    root = checkpoints_dir(cfg)
    deepspeed_dir = root / f".{progress.step:06d}.deepspeed"
    if run.ds_stage:
        accelerator.save_state(str(deepspeed_dir))  # sharded optimizer state: every rank writes its part
    weights = accelerator.get_state_dict(run.model) if run.ds_stage == 3 else None  # gathered on all ranks
    counts = sum_over_ranks(accelerator, run.collator.truncated, run.collator.skipped)
    truncated, skipped = (int(count) for count in counts)
    path = root / f"{progress.step:06d}"
    if run.main:

        def write(folder: Path) -> None:
            accelerator.unwrap_model(run.model).save_pretrained(folder, state_dict=weights)
            run.loaded.processor.save_pretrained(folder)
            (folder / "config.yaml").write_text(config_to_yaml(cfg))
            if run.ds_stage:
                deepspeed_dir.rename(folder / "deepspeed")
            save_trainer_state(
                folder,
                {
                    "stage": "sft",
                    "step": progress.step,
                    "micro": progress.micro,
                    "samples_seen": progress.samples_seen,
                    "best_eval": progress.best_eval,
                    "bad_evals": progress.bad_evals,
                    "eval_loss": progress.eval_loss,
                    "eval_acc": progress.eval_acc,
                    "truncated": truncated,
                    "skipped": skipped,
                    "early_stopped": progress.early_stopped,
                    "optimizer": None if run.ds_stage else run.optimizer.state_dict(),
                    "total_steps": run.counts.total_steps,
                },
            )

        meta = {
            "stage": "sft",
            "family": cfg.model.family,
            "base_model": run.base_model,
            "lora": cfg.model.lora is not None,
            "epoch": run.counts.epoch_at(progress.micro),
            "metrics": row,
            **(run.tracker.checkpoint_meta() if run.tracker is not None else {}),  # the W&B run to continue
        }
        keep = {"keep_last": cfg.sft.keep_last, "protect": protected_checkpoints(cfg)}
        path = save_checkpoint(root, progress.step, meta, write, **keep)
    accelerator.wait_for_everyone()
    run.saved_at = progress.step
    return path


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
        meta["files"] = {
            name: entry for name, entry in (meta.get("files") or {}).items() if (tmp / name).is_file()
        }
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
