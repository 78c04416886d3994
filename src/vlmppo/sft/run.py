"""The state of an SFT run: what ``start_run`` builds and the loop, the evaluation and the checkpoints use.

Its own module so that the start (``sft/startup.py``), the steps and the checkpoints, which call each other,
all name it without importing each other at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmppo.config import Config
from vlmppo.sft.dataset import SftCollator, SftExample
from vlmppo.sft.schedule import SftCounts


@dataclass
class SftProgress:
    """The counters a checkpoint saves and a resume restores (with the collator's truncated/skipped counts).

    Attributes:
        step: Optimizer steps done.
        micro: Micro-batches drawn: the data position (``schedule.micro_batch`` recomputes the order).
        samples_seen: Training samples over all ranks.
        best_eval, bad_evals: The best eval loss and the evals since it (early stopping).
        eval_loss, eval_acc: The last eval's token loss and accuracy.
        early_stopped: The run ended by early stopping (a resume does not train it further).
    """

    step: int = 0
    micro: int = 0
    samples_seen: int = 0
    best_eval: float | None = None
    bad_evals: int = 0
    eval_loss: float | None = None
    eval_acc: float | None = None
    early_stopped: bool = False


@dataclass
class Throughput:
    """Time spent in optimizer steps of this process's run (eval and saving excluded)."""

    seconds: float = 0.0
    steps: int = 0
    samples: float = 0.0


@dataclass
class SftRun:
    """What the SFT loop works with.

    Attributes:
        out: ``runs/<name>/sft``.
        model, optimizer: As prepared by ``accelerator`` (DDP/DeepSpeed wrapped); ``loaded`` holds the
            unwrapped model and its processor.
        params: The trainable parameters (LoRA, or all for full fine-tuning).
        base_model: The base model's path or hub id, for the checkpoints' metadata.
        ds_stage: The DeepSpeed ZeRO stage (0: none).
        eval_batch: Eval micro-batch size (no activations kept: twice the training batch fits).
        saved_at: The step of the newest checkpoint (-1: none yet).
        tracker: ``metrics.jsonl`` and friends (main process only, else None).
        batches: The collated micro-batches (``sft/loader.py``), from ``progress.micro`` on.
    """

    cfg: Config
    out: Path
    accelerator: Any
    loaded: Any
    model: Any
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    base_model: str
    ds_stage: int
    collator: SftCollator
    val_collator: SftCollator
    train: list[SftExample]
    val: list[SftExample]
    counts: SftCounts
    # Approximate tokens per training example (for length grouping).
    lengths: list[int] = field(default_factory=list)
    progress: SftProgress = field(default_factory=SftProgress)
    throughput: Throughput = field(default_factory=Throughput)
    resumed_from: Path | None = None
    resume_changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    saved_at: int = -1
    tracker: Any = None
    batches: Any = None  # the iterator of collated micro-batches (sft/loader.py), started on first use

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def eval_batch(self) -> int:
        return self.cfg.sft.batch_size * 2
