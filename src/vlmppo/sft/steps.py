"""What an SFT run does per step: one optimizer step over its micro-batches, the evaluation with early stopping,
and the final greedy action accuracy — and the sums over ranks that make every rank agree.
"""

from __future__ import annotations

import time

import torch

from vlmppo.models.inputs import IGNORE_INDEX
from vlmppo.sft.loader import next_micro_batch
from vlmppo.sft.loss import token_loss
from vlmppo.sft.run import SftRun
from vlmppo.sft.schedule import lr_at


def sum_over_ranks(accelerator, *values: float) -> list[float]:
    """Sum numbers over ranks (an all-reduce; nothing to do with one process)."""
    if accelerator.num_processes == 1:
        return list(values)
    totals = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(totals, reduction="sum").tolist()


def train_step(run: SftRun) -> dict:
    """One optimizer step: the LR of this step, its micro-batches collated, forward/backward, the step.

    The loss is the sum of token losses over all the step's answer tokens (every micro-batch and rank)
    divided by their count; accelerate divides by ``grad_accum`` and DDP averages over ranks, hence the
    factor ``grad_accum × world``.

    Returns:
        The step's row of ``metrics.jsonl``.
    """
    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    sft = cfg.sft
    started = time.perf_counter()
    lr = lr_at(progress.step, run.counts, sft.lr, sft.lr_schedule)
    for group in run.optimizer.param_groups:
        group["lr"] = lr  # before backward: DeepSpeed steps inside the last backward
    # Collate all micro-batches first: their answer tokens (all ranks) normalise the loss.
    batches = []
    for _ in range(sft.grad_accum):
        batches.append(next_micro_batch(run))  # collated ahead (sft/loader.py); counts progress.micro
    local_tokens = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in batches)
    local_samples = sum(len(batch["input_ids"]) for batch in batches)
    n_tokens, n_samples = sum_over_ranks(accelerator, local_tokens, local_samples)
    scale = sft.grad_accum * accelerator.num_processes / max(n_tokens, 1)
    loss_sum = correct = 0.0
    for batch in batches:
        with accelerator.accumulate(run.model):
            batch = batch.to(accelerator.device, non_blocking=True)  # pinned by the loader on a GPU
            labels = batch.pop("labels")
            loss, _, right = token_loss(run.model(**batch).logits, labels)
            accelerator.backward(loss * scale)
            loss_sum, correct = loss_sum + loss.item(), correct + right
    grad_norm = accelerator.clip_grad_norm_(run.params, sft.max_grad_norm)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    progress.samples_seen += int(n_samples)
    seconds = time.perf_counter() - started
    run.throughput.seconds += seconds
    run.throughput.steps += 1
    run.throughput.samples += n_samples
    loss_sum, correct = sum_over_ranks(accelerator, loss_sum, correct)
    truncated, skipped = sum_over_ranks(accelerator, run.collator.truncated, run.collator.skipped)
    row = {
        "step": progress.step,
        "epoch": round(run.counts.epoch_at(progress.micro), 4),
        "samples": progress.samples_seen,
        "sft/loss": loss_sum / max(n_tokens, 1),
        "sft/token_acc": correct / max(n_tokens, 1),
        "sft/grad_norm": float(grad_norm) if grad_norm is not None else None,
        "sft/lr": lr,
        "sft/tokens": int(n_tokens),
        "time/samples_per_s": n_samples / seconds,
        "data/truncated": int(truncated),
        "data/skipped": int(skipped),
    }
    if accelerator.device.type == "cuda":  # the fullest GPU of the run (bench/data_parallel.py reads it)
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
        row["sys/gpu_mem_peak_gb"] = float(accelerator.gather(peak).max())
    return row


def evaluate(run: SftRun) -> dict:
    """Eval loss and token accuracy on val; counts evals without a new best, and sets ``early_stopped``
    after ``sft.early_stopping_patience`` of them. Returns the ``eval/*`` metrics."""
    progress, patience = run.progress, run.cfg.sft.early_stopping_patience
    progress.eval_loss, progress.eval_acc = evaluate_loss(
        run.model, run.val_collator, run.val, run.eval_batch, run.accelerator
    )
    if progress.best_eval is None or progress.eval_loss < progress.best_eval:
        progress.best_eval, progress.bad_evals = progress.eval_loss, 0
    else:
        progress.bad_evals += 1
    if patience and progress.bad_evals >= patience:
        progress.early_stopped = True
    return {"eval/loss": progress.eval_loss, "eval/token_acc": progress.eval_acc}


def env_eval(run: SftRun, play) -> dict:
    """``sft.eval_episodes`` greedy episodes per ``eval.seeds`` seed with the current weights, played by
    ``play`` (``vlmppo.eval.live.greedy_eval``: the eval layer, above this one) on the main process while the
    others wait; its ``eval/*`` metrics (``eval/success_rate``, ...; none on the other ranks). It leaves every
    random stream as it was, so a run with these evals trains exactly as one without."""
    import dataclasses
    from types import SimpleNamespace

    metrics = {}
    if run.main:
        model = run.accelerator.unwrap_model(run.model)
        view = SimpleNamespace(loaded=dataclasses.replace(run.loaded, model=model), sampler=None,
                               device=str(run.accelerator.device))  # fmt: skip
        metrics = play(view, run.cfg, episodes=run.cfg.sft.eval_episodes)
        metrics["time/env_eval_s"] = metrics.pop("time/eval_s")
    run.accelerator.wait_for_everyone()
    return metrics


def evaluate_loss(model, collator, examples, batch_size, accelerator) -> tuple[float, float]:
    """Mean token loss and token accuracy of the answers over ``examples`` (sharded over ranks)."""
    world, rank = accelerator.num_processes, accelerator.process_index
    share = examples[rank::world]
    n_batches = -(-len(examples) // (batch_size * world))
    model.eval()
    loss_sum = n_tokens = n_correct = 0.0
    with torch.no_grad():
        for index in range(n_batches):
            chunk = share[index * batch_size : (index + 1) * batch_size]
            weight = 1.0 if chunk else 0.0  # a rank out of samples still runs the step (ZeRO-3 lockstep)
            batch = collator(chunk or examples[:1]).to(accelerator.device)
            labels = batch.pop("labels")
            loss, tokens, right = token_loss(model(**batch).logits, labels)
            loss_sum += weight * loss.item()
            n_tokens += weight * tokens
            n_correct += weight * right
    loss_sum, n_tokens, n_correct = sum_over_ranks(accelerator, loss_sum, n_tokens, n_correct)
    model.train()
    return loss_sum / max(n_tokens, 1), n_correct / max(n_tokens, 1)


def action_accuracy(run: SftRun, result) -> dict:
    """Greedy action accuracy of the trained model on val, into ``result`` (an ``SftResult``) and returned
    as the final metrics' ``eval/action_*`` entries."""
    from vlmppo.envs import adapter_from_config
    from vlmppo.sft.accuracy import greedy_action_accuracy

    accuracy = greedy_action_accuracy(
        run.accelerator.unwrap_model(run.model),
        run.loaded,
        run.val,
        adapter_from_config(run.cfg.env),
        batch_size=run.eval_batch,
        device=run.accelerator.device,
        accelerator=run.accelerator,
        synced_gpus=run.ds_stage == 3,
    )
    result.action_acc, result.unparseable_rate = accuracy.accuracy, accuracy.unparseable_rate
    result.n_action_eval = accuracy.total
    result.action_samples = list(accuracy.samples)
    if accuracy.label_unparseable:
        result.notes.append(
            f"{accuracy.label_unparseable} val labels name no legal action of {run.cfg.env.id} and were left out of "
            "the action accuracy (a dataset from another env?)"
        )
    return {
        "eval/action_acc": accuracy.accuracy,
        "eval/unparseable_rate": accuracy.unparseable_rate,
        "eval/action_samples": accuracy.total,
    }
