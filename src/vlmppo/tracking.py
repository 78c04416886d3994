"""Metrics of a training stage: ``metrics.jsonl`` always, TensorBoard and W&B when configured.

One ``Tracker`` per stage run. On resume the lines past the resumed step are cut from ``metrics.jsonl``
first, so a run that died after logging step 7 but saving only step 6 does not show step 7 twice.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmppo.errors import ConfigError
from vlmppo.io import JsonlWriter, truncate_jsonl


class Tracker:
    """Writes one metrics dict per step to ``metrics.jsonl`` (+ TensorBoard, + W&B).

    Args:
        out_dir: The stage folder (``runs/<name>/ppo``); files go there.
        tracking: The ``tracking`` config section.
        step_key: The counter in each row that TensorBoard/W&B use as x axis (``update`` or ``step``).
        run_name: W&B run name.
        resume_step: When resuming, the step of the checkpoint: later lines are dropped.
    """

    def __init__(
        self, out_dir: Path, tracking, *, step_key: str, run_name: str, resume_step: int | None = None
    ):
        self.out_dir, self.step_key = Path(out_dir), step_key
        path = self.out_dir / "metrics.jsonl"
        if resume_step is not None:
            truncate_jsonl(path, step_key, resume_step)
        elif path.exists():
            path.unlink()  # a fresh run starts a fresh log
        self._jsonl = JsonlWriter(path)
        self._tb = self._wandb = None
        if tracking.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tracking.tensorboard=true but the tensorboard package is not installed.",
                    hint="pip install tensorboard, or set tracking.tensorboard=false.",
                ) from None
            self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
        if tracking.wandb:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "tracking.wandb=true but the wandb package is not installed.",
                    hint="pip install wandb, or set tracking.wandb=false.",
                ) from None
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            self._wandb = wandb.init(
                project=tracking.wandb_project,
                name=run_name,
                dir=str(self.out_dir),
                mode=mode,
                resume="allow",
            )

    def log(self, row: dict) -> None:
        self._jsonl.write_many([row])
        step = int(row.get(self.step_key, 0))
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != self.step_key}
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
