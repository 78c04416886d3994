"""An SFT run's start: the inputs checked, the model and optimizer under accelerate, a resume restored.

``start_run`` is what ``train_sft`` does before its loop; what it returns (``SftRun``) is what the loop, the
evaluation and the checkpoints work with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmppo.config import Config, run_dir
from vlmppo.sft.checkpointing import config_changes, drop_final_rows, find_resume, load_weights
from vlmppo.sft.dataset import SftCollator, load_sft_examples
from vlmppo.sft.launching import check_launch, deepspeed_plugin
from vlmppo.sft.run import SftProgress, SftRun
from vlmppo.sft.schedule import sft_counts


def dataset_paths(cfg: Config) -> tuple[Path, Path]:
    data = run_dir(cfg) / "data"
    return Path(cfg.sft.train_file or data / "train.jsonl"), Path(cfg.sft.val_file or data / "val.jsonl")


def load_val(path: Path, explicit: bool) -> list:
    """The val examples; an absent or empty default val file means no val set (a note, not an error)."""
    if not explicit and (not path.is_file() or not path.read_text(encoding="utf-8").strip()):
        return []
    return load_sft_examples(path)


def sft_accelerator(cfg: Config, device: str):
    """The run's Accelerator: ``sft.grad_accum`` accumulation steps, the ``sft.launch`` DeepSpeed plugin."""
    from vlmppo.accel import make_accelerator, precision_for

    sft = cfg.sft
    plugin = deepspeed_plugin(
        sft.launch, grad_accum=sft.grad_accum, max_grad_norm=sft.max_grad_norm, batch_size=sft.batch_size
    )
    return make_accelerator(
        device,
        precision_for("auto", device),
        gradient_accumulation_steps=sft.grad_accum,
        deepspeed_plugin=plugin,
    )


def start_run(cfg: Config, resume: str | None) -> SftRun:
    """Check everything a user can get wrong before any weight is loaded or file written, then build the
    model and optimizer, and on a resume restore the optimizer, counters and (last) every RNG stream."""
    from vlmppo.models.quantization import check_quantization
    from vlmppo.sysinfo import resolve_device
    from vlmppo.train_state import load_trainer_state, restore_rng

    sft = cfg.sft
    check_launch(sft.launch)
    check_quantization(cfg.model, resolve_device(cfg))
    train_path, val_path = dataset_paths(cfg)
    train = load_sft_examples(train_path)
    val = load_val(val_path, explicit=sft.val_file is not None)
    resume_path, resume_notes = find_resume(cfg, resume)
    state = load_trainer_state(resume_path, stage="sft") if resume_path else None
    notes = [] if val else [f"no val set ({val_path} is absent or empty): no eval loss, no action accuracy"]
    notes += resume_notes
    if resume == "auto" and resume_path is None:
        notes.append("--resume auto: no SFT checkpoint in this run yet, so it starts fresh")
    run = build_run(cfg, resolve_device(cfg), resume_path, train, val)
    run.notes = notes
    if state is not None:
        restore_progress(run, state, resume_path)
        run.resume_changes = config_changes(resume_path, cfg)
        if run.main:
            drop_final_rows(run.out / "metrics.jsonl")  # a resumed run writes its own final row
    if run.main:
        from vlmppo.tracking import Tracker

        resume_step = run.progress.step if state else None
        run.tracker = Tracker(
            run.out,
            cfg.tracking,
            step_key="step",
            run_name=cfg.run.name,
            resume_step=resume_step,
            config=cfg.model_dump(mode="json"),
            resume_from=resume_path,
            hparam_metrics=("eval/loss", "eval/action_acc"),
        )
    if state is not None:
        restore_rng(state["rng"])  # last: loading the model drew from the RNG (LoRA init)
    run.model.train()
    return run


def build_run(cfg: Config, device: str, resume_path: Path | None, train: list, val: list) -> SftRun:
    """The accelerator, the model (fresh, or the resumed checkpoint's), the optimizer, the collators."""
    sft = cfg.sft
    accelerator = sft_accelerator(cfg, device)
    device = accelerator.device
    torch.manual_seed(cfg.run.seed)
    if resume_path:
        loaded, base_model = load_weights(cfg, resume_path, device)
    else:
        from vlmppo.models import load_model

        loaded = load_model(cfg.model, device=device, for_training=True)
        base_model = str(loaded.path)
    params = [param for param in loaded.model.parameters() if param.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=sft.lr, weight_decay=sft.weight_decay)
    model, optimizer = accelerator.prepare(loaded.model, optimizer)
    plugin = accelerator.state.deepspeed_plugin
    return SftRun(
        cfg=cfg,
        out=run_dir(cfg) / "sft",
        accelerator=accelerator,
        loaded=loaded,
        model=model,
        optimizer=optimizer,
        params=params,
        base_model=base_model,
        ds_stage=plugin.zero_stage if plugin else 0,
        collator=SftCollator(loaded, sft.max_length, sft.on_too_long),
        val_collator=SftCollator(loaded, sft.max_length, sft.on_too_long),
        train=train,
        val=val,
        counts=sft_counts(sft, len(train), accelerator.num_processes),
        lengths=[example.approx_length for example in train],
        resumed_from=resume_path,
    )


def restore_progress(run: SftRun, state: dict, checkpoint: Path) -> None:
    """The optimizer state (DeepSpeed's own, sharded, under ZeRO) and the counters of ``checkpoint``."""
    if run.ds_stage:
        run.accelerator.load_state(str(checkpoint / "deepspeed"))
    else:
        run.optimizer.load_state_dict(state["optimizer"])
    run.progress = SftProgress(
        step=state["step"],
        micro=state["micro"],
        samples_seen=state["samples_seen"],
        best_eval=state["best_eval"],
        bad_evals=state["bad_evals"],
        eval_loss=state.get("eval_loss"),
        eval_acc=state.get("eval_acc"),
        early_stopped=bool(state.get("early_stopped")),  # a finished run stays finished
    )
    run.saved_at = run.progress.step
    if run.main:  # the counts saved are sums over ranks: carry them on rank 0 only
        run.collator.truncated, run.collator.skipped = state["truncated"], state["skipped"]
