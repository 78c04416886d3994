"""`train_sft`: supervised fine-tuning of the VLM on the preprocessed dataset, our own loop under accelerate.

Why not transformers' ``Trainer``: we want three things it makes hard. (1) Exact resume: the data position
is one counter (`schedule.micro_batch` recomputes the order from the seed), the LR is a pure function of
the step, and every RNG stream is saved, so "4 steps" and "2 steps, resume, 2 steps" give the same losses.
(2) The loss of an optimizer step is the mean over *all* its answer tokens (every micro-batch and rank),
not a mean of micro-batch means that over-weights short answers. (3) The configured LR curve is applied
by us before each step, also under DeepSpeed, whose own scheduler is never created.

Reads top to bottom in phases: 0. inputs, 1. model and optimizer, 2. (resume), then per optimizer step:
3. collate, 4. forward/backward, 5. log, 6. eval + early stopping, 7. checkpoint; 8. greedy action
accuracy and ``final/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmppo.config import Config, config_to_yaml, run_dir
from vlmppo.locks import locked
from vlmppo.models.inputs import IGNORE_INDEX
from vlmppo.sft.checkpointing import (
    checkpoints_dir,
    config_changes,
    drop_final_rows,
    find_resume,
    load_weights,
    write_final,
)
from vlmppo.sft.dataset import SftCollator, load_sft_examples
from vlmppo.sft.launching import check_launch, deepspeed_plugin
from vlmppo.sft.loss import token_loss
from vlmppo.sft.schedule import lr_at, micro_batch, sft_counts


@dataclass
class SftResult:
    """What a run did (the CLI prints it; tests read it)."""

    out_dir: Path
    steps: int  # optimizer steps done, counting those before a resume
    total_steps: int
    checkpoint: Path | None = None  # newest numbered checkpoint
    final: Path | None = None  # checkpoints/final (absent when stopped by a signal)
    last_metrics: dict = field(default_factory=dict)
    eval_loss: float | None = None
    eval_token_acc: float | None = None
    action_acc: float | None = None
    unparseable_rate: float | None = None
    n_action_eval: int = 0
    steps_per_s: float | None = None  # optimizer steps per second of training (eval and saving excluded)
    samples_per_s: float | None = None
    stopped_by: str | None = None
    early_stopped: bool = False
    resumed_from: Path | None = None
    resume_changes: list[str] = field(default_factory=list)
    truncated: int = 0
    skipped: int = 0
    notes: list[str] = field(default_factory=list)
    action_samples: list = field(default_factory=list)  # (answer, label action, parsed action)
    loaded: Any = None  # the trained model (unwrapped) with its processor, for notebooks and tests


def dataset_paths(cfg: Config) -> tuple[Path, Path]:
    data = run_dir(cfg) / "data"
    return Path(cfg.sft.train_file or data / "train.jsonl"), Path(cfg.sft.val_file or data / "val.jsonl")


def load_val(path: Path, explicit: bool) -> list:
    """The val examples; an absent or empty default val file means no val set (a note, not an error)."""
    if not explicit and (not path.is_file() or not path.read_text(encoding="utf-8").strip()):
        return []
    return load_sft_examples(path)


def make_accelerator(cfg: Config, device: str):
    from vlmppo.accel import make_accelerator as accelerator_for
    from vlmppo.accel import precision_for

    s = cfg.sft
    plugin = deepspeed_plugin(
        s.launch, grad_accum=s.grad_accum, max_grad_norm=s.max_grad_norm, batch_size=s.batch_size
    )
    return accelerator_for(
        device,
        precision_for("auto", device),
        gradient_accumulation_steps=s.grad_accum,
        deepspeed_plugin=plugin,
    )


def _sum(accelerator, *values: float) -> list[float]:
    """Sum numbers over ranks (no-op with one process)."""
    if accelerator.num_processes == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").tolist()


def evaluate_loss(model, collator, examples, batch_size, accelerator) -> tuple[float, float]:
    """Mean token loss and token accuracy of the answers over ``examples`` (sharded over ranks)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    share = examples[rank::world]
    n_batches = -(-len(examples) // (batch_size * world))
    model.eval()
    loss_sum = n_tok = n_ok = 0.0
    with torch.no_grad():
        for b in range(n_batches):
            chunk = share[b * batch_size : (b + 1) * batch_size]
            weight = 1.0 if chunk else 0.0  # a rank out of samples still runs the step (ZeRO-3 lockstep)
            batch = collator(chunk or examples[:1]).to(accelerator.device)
            labels = batch.pop("labels")
            loss, n, ok = token_loss(model(**batch).logits, labels)
            loss_sum, n_tok, n_ok = loss_sum + weight * loss.item(), n_tok + weight * n, n_ok + weight * ok
    loss_sum, n_tok, n_ok = _sum(accelerator, loss_sum, n_tok, n_ok)
    model.train()
    return loss_sum / max(n_tok, 1), n_ok / max(n_tok, 1)


@locked("sft")
def train_sft(cfg: Config, on_step=None, resume: str | None = None) -> SftResult:
    """Fine-tune ``cfg.model`` on the SFT dataset as configured.

    Args:
        cfg: The resolved config (``model``, ``sft``, ``env`` for the action parser, ``tracking``, ``run``).
        on_step: Called on the main process after each optimizer step as ``on_step(step, total, row)``.
        resume: None (fresh run), ``"auto"`` (newest SFT checkpoint of this run, if any) or a checkpoint.

    Returns:
        An `SftResult`. Writes ``runs/<name>/sft/metrics.jsonl`` and ``sft/checkpoints/NNNNNN/`` (+ ``last``,
        + ``final/`` when the run completes).

    Raises:
        DataError: A missing, empty or malformed dataset (file and line named).
        CheckpointError: A resume from another family, a non-SFT checkpoint, or mismatched LoRA settings.
        LaunchError: ``sft.launch=zero*`` without DeepSpeed installed.
    """
    from vlmppo.checkpoints import protected_checkpoints, save_checkpoint
    from vlmppo.signals import stop_handlers
    from vlmppo.sysinfo import resolve_device
    from vlmppo.tracking import Tracker
    from vlmppo.train_state import load_trainer_state, restore_rng, save_trainer_state

    s = cfg.sft
    # 0. inputs: check everything a user can get wrong before any weight is loaded or file written
    check_launch(s.launch)
    train_path, val_path = dataset_paths(cfg)
    train = load_sft_examples(train_path)
    val = load_val(val_path, explicit=s.val_file is not None)
    resume_path, resume_notes = find_resume(cfg, resume)
    state = load_trainer_state(resume_path, stage="sft") if resume_path else None
    device = resolve_device(cfg)
    out = run_dir(cfg) / "sft"
    notes = [] if val else [f"no val set ({val_path} is absent or empty): no eval loss, no action accuracy"]
    notes += resume_notes
    if resume == "auto" and resume_path is None:
        notes.append("--resume auto: no SFT checkpoint in this run yet, so it starts fresh")

    # 1. model, optimizer, accelerator
    accelerator = make_accelerator(cfg, device)
    device = accelerator.device
    world, main = accelerator.num_processes, accelerator.is_main_process
    torch.manual_seed(cfg.run.seed)
    if resume_path:
        loaded, base_model = load_weights(cfg, resume_path, device)
    else:
        from vlmppo.models import load_model

        loaded = load_model(cfg.model, device=device, for_training=True)
        base_model = str(loaded.path)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    model, optimizer = accelerator.prepare(loaded.model, optimizer)
    ds_stage = accelerator.state.deepspeed_plugin.zero_stage if accelerator.state.deepspeed_plugin else 0
    collator = SftCollator(loaded, s.max_length, s.on_too_long)
    val_collator = SftCollator(loaded, s.max_length, s.on_too_long)
    counts = sft_counts(s, len(train), world)
    lengths = [e.approx_length for e in train]
    eval_batch = s.batch_size * 2  # no activations kept for backward: twice the training batch fits

    # 2. resume: weights are loaded above; now the optimizer, counters and RNG streams
    step = micro = samples_seen = bad_evals = 0
    best_eval = eval_loss = eval_acc = None
    if state is not None:
        if ds_stage:
            accelerator.load_state(str(resume_path / "deepspeed"))
        else:
            optimizer.load_state_dict(state["optimizer"])
        step, micro, samples_seen = state["step"], state["micro"], state["samples_seen"]
        best_eval, bad_evals = state["best_eval"], state["bad_evals"]
        eval_loss, eval_acc = state.get("eval_loss"), state.get("eval_acc")
        if accelerator.is_main_process:  # the counts saved are sums over ranks: carry them on rank 0 only
            collator.truncated, collator.skipped = state["truncated"], state["skipped"]
    result = SftResult(out, step, counts.total_steps, resumed_from=resume_path, notes=notes)
    result.early_stopped = bool(state and state.get("early_stopped"))  # a finished run stays finished
    if resume_path:
        result.resume_changes = config_changes(resume_path, cfg)

    def save(step: int, row: dict) -> Path:
        """Phase 7: a numbered checkpoint, atomically (every rank takes part under DeepSpeed)."""
        root = checkpoints_dir(cfg)
        ds_dir = root / f".{step:06d}.deepspeed"
        if ds_stage:
            accelerator.save_state(str(ds_dir))  # sharded optimizer state: every rank writes its part
        weights = accelerator.get_state_dict(model) if ds_stage == 3 else None  # gathered on all ranks
        truncated, skipped = (int(x) for x in _sum(accelerator, collator.truncated, collator.skipped))
        path = root / f"{step:06d}"
        if main:

            def write(folder: Path) -> None:
                accelerator.unwrap_model(model).save_pretrained(folder, state_dict=weights)
                loaded.processor.save_pretrained(folder)
                (folder / "config.yaml").write_text(config_to_yaml(cfg))
                if ds_stage:
                    ds_dir.rename(folder / "deepspeed")
                save_trainer_state(
                    folder,
                    {
                        "stage": "sft",
                        "step": step,
                        "micro": micro,
                        "samples_seen": samples_seen,
                        "best_eval": best_eval,
                        "bad_evals": bad_evals,
                        "eval_loss": eval_loss,
                        "eval_acc": eval_acc,
                        "truncated": truncated,
                        "skipped": skipped,
                        "early_stopped": result.early_stopped,
                        "optimizer": None if ds_stage else optimizer.state_dict(),
                        "total_steps": counts.total_steps,
                    },
                )

            meta = {
                "stage": "sft",
                "family": cfg.model.family,
                "base_model": base_model,
                "lora": cfg.model.lora is not None,
                "epoch": counts.epoch_at(micro),
                "metrics": row,
                **tracker.checkpoint_meta(),  # the W&B run a resume continues
            }
            path = save_checkpoint(
                root, step, meta, write, keep_last=s.keep_last, protect=protected_checkpoints(cfg)
            )
        accelerator.wait_for_everyone()
        return path

    if state is not None and main:
        drop_final_rows(out / "metrics.jsonl")  # a resumed run writes its own final row
    tracker = (
        Tracker(
            out,
            cfg.tracking,
            step_key="step",
            run_name=cfg.run.name,
            resume_step=step if state else None,
            config=cfg.model_dump(mode="json"),
            resume_from=resume_path,
            hparam_metrics=("eval/loss", "eval/action_acc"),
        )
        if main
        else None
    )
    if state is not None:
        restore_rng(state["rng"])  # last: loading the model above drew from the RNG (LoRA init)
    model.train()
    train_time, trained_steps, trained_samples, row = 0.0, 0, 0, {}
    saved_at = step if state else -1
    try:
        with stop_handlers() as stop:
            while step < counts.total_steps and not result.early_stopped:
                t0 = time.perf_counter()
                lr = lr_at(step, counts, s.lr, s.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr  # before backward: DeepSpeed steps inside the last backward
                # 3. collate this step's micro-batches first: their answer tokens (all ranks) normalise the loss
                batches = []
                for _ in range(s.grad_accum):
                    idx = micro_batch(lengths, micro, counts, seed=cfg.run.seed, batch_size=s.batch_size,
                                      world=world, rank=accelerator.process_index,
                                      group_by_length=s.group_by_length)  # fmt: skip
                    micro += 1
                    batches.append(collator([train[i] for i in idx]))
                n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
                n_samples = sum(len(b["input_ids"]) for b in batches)
                (n_tokens, n_samples) = _sum(accelerator, n_local, n_samples)
                # 4. forward/backward: sum of token losses / all tokens of the step; accelerate divides by
                #    grad_accum and DDP averages over ranks, hence the factor grad_accum * world
                scale = s.grad_accum * world / max(n_tokens, 1)
                loss_sum = correct = 0.0
                for batch in batches:
                    with accelerator.accumulate(model):
                        batch = batch.to(device)
                        labels = batch.pop("labels")
                        loss, _, ok = token_loss(model(**batch).logits, labels)
                        accelerator.backward(loss * scale)
                        loss_sum, correct = loss_sum + loss.item(), correct + ok
                grad_norm = accelerator.clip_grad_norm_(params, s.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples_seen += int(n_samples)
                dt = time.perf_counter() - t0
                train_time, trained_steps, trained_samples = (
                    train_time + dt,
                    trained_steps + 1,
                    trained_samples + n_samples,
                )
                loss_sum, correct = _sum(accelerator, loss_sum, correct)
                truncated, skipped = _sum(accelerator, collator.truncated, collator.skipped)
                # 5. log
                row = {
                    "step": step,
                    "epoch": round(counts.epoch_at(micro), 4),
                    "samples": samples_seen,
                    "sft/loss": loss_sum / max(n_tokens, 1),
                    "sft/token_acc": correct / max(n_tokens, 1),
                    "sft/grad_norm": float(grad_norm) if grad_norm is not None else None,
                    "sft/lr": lr,
                    "sft/tokens": int(n_tokens),
                    "time/samples_per_s": n_samples / dt,
                    "data/truncated": int(truncated),
                    "data/skipped": int(skipped),
                }
                # 6. eval + early stopping
                last = step == counts.total_steps
                if val and (step % s.eval_every == 0 or last):
                    eval_loss, eval_acc = evaluate_loss(model, val_collator, val, eval_batch, accelerator)
                    row.update({"eval/loss": eval_loss, "eval/token_acc": eval_acc})
                    if best_eval is None or eval_loss < best_eval:
                        best_eval, bad_evals = eval_loss, 0
                    else:
                        bad_evals += 1
                    if s.early_stopping_patience and bad_evals >= s.early_stopping_patience:
                        result.early_stopped = True
                if main and (step % cfg.tracking.log_every == 0 or "eval/loss" in row or last):
                    tracker.log(row)
                if main and on_step:
                    on_step(step, counts.total_steps, row)
                # 7. checkpoint: on schedule, at the end, on early stop, and on SIGTERM/SIGUSR1
                stop_now = bool(_sum(accelerator, float(stop.requested))[0])
                if step % s.save_every == 0 or last or result.early_stopped or stop_now:
                    result.checkpoint = save(step, row)
                    saved_at = step
                if stop_now:
                    result.stopped_by = stop.signal_name or "a signal on another rank"
                    break
                if result.early_stopped:
                    result.notes.append(
                        f"early stopping: eval loss did not improve for {bad_evals} evals (best {best_eval:.4g})"
                    )
                    break
            if saved_at != step:  # resumed at the last step: nothing trained, nothing new to save
                result.checkpoint = save(step, row)
        result.steps, result.last_metrics = step, row
        loaded.model = accelerator.unwrap_model(model)
        result.loaded = loaded
        result.eval_loss, result.eval_token_acc = eval_loss, eval_acc
        result.truncated, result.skipped = (
            int(x) for x in _sum(accelerator, collator.truncated, collator.skipped)
        )
        if trained_steps:
            result.steps_per_s, result.samples_per_s = (
                trained_steps / train_time,
                trained_samples / train_time,
            )
        if result.checkpoint is None:
            from vlmppo.checkpoints import latest_checkpoint

            result.checkpoint = latest_checkpoint(checkpoints_dir(cfg))
        if result.stopped_by:
            return result
        # 8. greedy action accuracy on val, then checkpoints/final
        final_metrics = {"step": step, "final": True, "eval/loss": eval_loss, "eval/token_acc": eval_acc}
        if val:
            final_metrics.update(
                _action_accuracy(cfg, model, loaded, val, eval_batch, accelerator, ds_stage, result)
            )
        if main:
            tracker.log(final_metrics)
            result.final = write_final(result.checkpoint, {"final_metrics": final_metrics})
        accelerator.wait_for_everyone()
    finally:
        if tracker is not None:
            tracker.close()
    return result


def _action_accuracy(cfg, model, loaded, val, batch_size, accelerator, ds_stage, result) -> dict:
    """Phase 8: greedy action accuracy of the trained model on val, into ``result`` and the final metrics."""
    from vlmppo.envs import adapter_from_config
    from vlmppo.sft.accuracy import greedy_action_accuracy

    acc = greedy_action_accuracy(
        accelerator.unwrap_model(model), loaded, val, adapter_from_config(cfg.env), batch_size=batch_size,
        device=accelerator.device, accelerator=accelerator, synced_gpus=ds_stage == 3,
    )  # fmt: skip
    result.action_acc, result.unparseable_rate, result.n_action_eval = (
        acc.accuracy,
        acc.unparseable_rate,
        acc.total,
    )
    result.action_samples = list(acc.samples)
    if acc.label_unparseable:
        result.notes.append(
            f"{acc.label_unparseable} val labels name no legal action of {cfg.env.id} and were left out of "
            "the action accuracy (a dataset from another env?)"
        )
    return {"eval/action_acc": acc.accuracy, "eval/unparseable_rate": acc.unparseable_rate,
            "eval/action_samples": acc.total}  # fmt: skip
