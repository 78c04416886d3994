"""`train_sft`: supervised fine-tuning of the VLM on the preprocessed dataset, our own loop under accelerate.

Why not transformers' ``Trainer``: we want three things it makes hard. (1) Exact resume: the data position
is one counter (`schedule.micro_batch` recomputes the order from the seed), the LR is a pure function of
the step, and every RNG stream is saved, so "4 steps" and "2 steps, resume, 2 steps" give the same losses.
(2) The loss of an optimizer step is the mean over *all* its answer tokens (every micro-batch and rank),
not a mean of micro-batch means that over-weights short answers. (3) The configured LR curve is applied
by us before each step, also under DeepSpeed, whose own scheduler is never created.

Reads top to bottom in phases, per optimizer step: 1. the step (collate, forward/backward; ``sft/steps.py``),
2. eval + early stopping, 3. log, 4. checkpoint (``sft/checkpointing.py``); then 5. greedy action accuracy and
``final/``. What comes before the loop — the inputs checked, the model and optimizer, a resume — is
``sft/startup.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmppo.config import Config
from vlmppo.locks import locked
from vlmppo.sft.checkpointing import checkpoints_dir, save_run, write_final
from vlmppo.sft.loader import close_loader
from vlmppo.sft.run import SftRun
from vlmppo.sft.startup import start_run
from vlmppo.sft.steps import action_accuracy, env_eval, evaluate, sum_over_ranks, train_step


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


@locked("sft")
def train_sft(cfg: Config, on_step=None, resume: str | None = None, evaluate_env=None) -> SftResult:
    """Fine-tune ``cfg.model`` on the SFT dataset as configured.

    Args:
        cfg: The resolved config (``model``, ``sft``, ``env`` for the action parser, ``tracking``, ``run``).
        on_step: Called on the main process after each optimizer step as ``on_step(step, total, row)``.
        resume: None (fresh run), ``"auto"`` (newest SFT checkpoint of this run, if any) or a checkpoint.
        evaluate_env: What plays ``sft.eval_episodes`` greedy episodes (``vlmppo.eval.live.greedy_eval``;
            required when that is set).

    Returns:
        An `SftResult`. Writes ``runs/<name>/sft/metrics.jsonl`` and ``sft/checkpoints/NNNNNN/`` (+ ``last``,
        + ``final/`` when the run completes).

    Raises:
        DataError: A missing, empty or malformed dataset (file and line named).
        CheckpointError: A resume from another family, a non-SFT checkpoint, or mismatched LoRA settings.
        LaunchError: ``sft.launch=zero*`` without DeepSpeed installed.
        ConfigError: ``sft.eval_episodes`` without ``evaluate_env``.
    """
    from vlmppo.signals import stop_handlers

    if cfg.sft.eval_episodes and evaluate_env is None:
        from vlmppo.errors import ConfigError

        raise ConfigError(f"sft.eval_episodes={cfg.sft.eval_episodes} asks for greedy episodes during SFT, "
                          "and nothing was given to play them.", hint="Pass evaluate_env=vlmppo.eval.live."
                          "greedy_eval (the sft and pipeline commands do), or set sft.eval_episodes=null.")  # fmt: skip

    run = start_run(cfg, resume)  # inputs checked, model + optimizer; a resume restores state and counters
    sft, progress, total, row = cfg.sft, run.progress, run.counts.total_steps, {}
    # sft.stop_at_step ends the run early; the learning-rate schedule stays that of all `total` steps.
    end = min(total, sft.stop_at_step or total)
    result = SftResult(run.out, progress.step, total, resumed_from=run.resumed_from, notes=run.notes)
    result.resume_changes = run.resume_changes
    try:
        with stop_handlers() as stop:
            while progress.step < end and not progress.early_stopped:
                # 1. one optimizer step: its micro-batches collated, forward/backward, the step
                row = train_step(run)
                last = progress.step == total
                # 2. eval + early stopping
                if progress.step % sft.eval_every == 0 or last:
                    row.update(evaluate(run) if run.val else {})
                    row.update(env_eval(run, evaluate_env) if sft.eval_episodes else {})
                # 3. log
                evaluated = "eval/loss" in row or "eval/success_rate" in row  # (no val set: episodes only)
                if run.main and (progress.step % cfg.tracking.log_every == 0 or evaluated or last):
                    run.tracker.log(row)
                if run.main and on_step:
                    on_step(progress.step, total, row)
                # 4. checkpoint: on schedule, at the end, on early stop, and on SIGTERM/SIGUSR1 (of any rank)
                stop_now = bool(sum_over_ranks(run.accelerator, float(stop.requested))[0])
                if progress.step % sft.save_every == 0 or last or progress.early_stopped or stop_now:
                    result.checkpoint = save_run(run, row)
                if stop_now:
                    result.stopped_by = stop.signal_name or "a signal on another rank"
                    break
                if progress.early_stopped:
                    result.notes.append(f"early stopping: eval loss did not improve for {progress.bad_evals} "
                                        f"evals (best {progress.best_eval:.4g})")  # fmt: skip
                    break
            if progress.step < total and not (result.stopped_by or progress.early_stopped):
                result.stopped_by = f"sft.stop_at_step={sft.stop_at_step}"
            # Steps not saved yet: none when resumed at the end (nothing trained, nothing new to save).
            if run.saved_at != progress.step:
                result.checkpoint = save_run(run, row)
        close_loader(run)  # before the greedy accuracy: the workers' prefetched batches are not needed
        finish(run, result, row)
        if not result.stopped_by:
            # 5. greedy action accuracy on val, then checkpoints/final
            write_final_checkpoint(run, result)
    finally:
        close_loader(run)
        if run.tracker is not None:
            run.tracker.close()
    return result


def finish(run: SftRun, result: SftResult, row: dict) -> None:
    """Fill ``result`` from the run: counters, the trained model, the newest checkpoint, throughput."""
    progress, throughput = run.progress, run.throughput
    result.steps, result.last_metrics, result.early_stopped = progress.step, row, progress.early_stopped
    run.loaded.model = run.accelerator.unwrap_model(run.model)
    result.loaded = run.loaded
    result.eval_loss, result.eval_token_acc = progress.eval_loss, progress.eval_acc
    counts = sum_over_ranks(run.accelerator, run.collator.truncated, run.collator.skipped)
    result.truncated, result.skipped = (int(count) for count in counts)
    if throughput.steps:
        result.steps_per_s = throughput.steps / throughput.seconds
        result.samples_per_s = throughput.samples / throughput.seconds
    if result.checkpoint is None:
        from vlmppo.checkpoints import latest_checkpoint

        result.checkpoint = latest_checkpoint(checkpoints_dir(run.cfg))


def write_final_checkpoint(run: SftRun, result: SftResult) -> None:
    """Phase 5: the final metrics row (with the greedy action accuracy on val) and ``checkpoints/final``."""
    progress = run.progress
    final_metrics = {"step": progress.step, "final": True, "eval/loss": progress.eval_loss,
                     "eval/token_acc": progress.eval_acc}  # fmt: skip
    if run.val:
        final_metrics.update(action_accuracy(run, result))
    if run.main:
        run.tracker.log(final_metrics)
        result.final = write_final(result.checkpoint, {"final_metrics": final_metrics})
    run.accelerator.wait_for_everyone()
