"""Metrics of a training stage: ``metrics.jsonl`` always, TensorBoard and W&B when configured.

One ``Tracker`` per stage run. On resume the lines past the resumed step are cut from ``metrics.jsonl``
first, so a run that died after logging step 7 but saving only step 6 does not show step 7 twice.

TensorBoard and W&B plot against ``x_key`` (PPO: ``env_steps``, the RL convention; SFT: the optimizer
step), get the resolved config as hyper-parameters, and PPO's sample answers as text. The W&B run id is
saved with every checkpoint (`checkpoint_meta`), so ``--resume`` continues the same W&B run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from vlmppo.errors import ConfigError
from vlmppo.io import JsonlWriter, truncate_jsonl

DEFAULT_WANDB_HOST = "https://api.wandb.ai"


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode a run starts in.

    ``WANDB_MODE`` when set (``disabled`` writes nothing at all); ``disabled`` for the older
    ``WANDB_DISABLED=true``; ``online`` when there are credentials, from ``WANDB_API_KEY`` or from the
    netrc entry that ``wandb login`` writes for the W&B host (``WANDB_BASE_URL``); else ``offline``
    (``wandb sync`` uploads the run later).
    """
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    if env.get("WANDB_API_KEY") or netrc_has_login(env.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST, env):
        return "online"
    return "offline"


def netrc_has_login(host_url: str, environ: Mapping[str, str]) -> bool:
    """Whether the netrc file (``$NETRC``, else ``~/.netrc``) holds a password for ``host_url``'s host,
    as ``wandb login`` writes it."""
    import netrc
    from urllib.parse import urlsplit

    path = Path(environ.get("NETRC") or Path(environ.get("HOME") or Path.home()) / ".netrc").expanduser()
    host = urlsplit(host_url).netloc
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        return False  # no file, or one W&B could not read either
    return bool(entry and entry[2])


def flat_hparams(config: Mapping, prefix: str = "") -> dict[str, str | int | float | bool]:
    """``{"ppo": {"lr": 1e-5}}`` -> ``{"ppo.lr": 1e-5}``; lists and nulls become text (TensorBoard's
    hyper-parameters are scalars or strings)."""
    flat: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class Tracker:
    """Writes one metrics dict per step to ``metrics.jsonl`` (+ TensorBoard, + W&B).

    Args:
        out_dir: The stage folder (``runs/<name>/ppo``); files go there.
        tracking: The ``tracking`` config section.
        step_key: The counter that orders the rows (``update`` or ``step``); resume cuts by it.
        run_name: W&B run name.
        resume_step: When resuming, the step of the checkpoint: later lines are dropped.
        x_key: The row's counter TensorBoard and W&B plot against (default ``step_key``; PPO: ``env_steps``).
        config: The resolved config (a plain dict): W&B's run config and TensorBoard's hyper-parameters.
        hparam_metrics: Metric keys the TensorBoard hyper-parameter view shows beside the config.
        resume_from: The checkpoint being resumed: its W&B run is continued.
    """

    def __init__(
        self,
        out_dir: Path,
        tracking,
        *,
        step_key: str,
        run_name: str,
        resume_step: int | None = None,
        x_key: str | None = None,
        config: dict | None = None,
        hparam_metrics: tuple[str, ...] = (),
        resume_from: Path | None = None,
    ):
        self.out_dir, self.step_key, self.x_key = Path(out_dir), step_key, x_key or step_key
        path = self.out_dir / "metrics.jsonl"
        if resume_step is not None:
            truncate_jsonl(path, step_key, resume_step)
        elif path.exists():
            path.unlink()  # a fresh run starts a fresh log
        self._jsonl = JsonlWriter(path)
        self._tb = self._wandb = None
        if tracking.tensorboard:
            self._tb = self._open_tensorboard(config or {}, hparam_metrics)
        if tracking.wandb:
            run_id = _saved_wandb_id(resume_from) if resume_from is not None else None
            self._wandb = self._open_wandb(tracking.wandb_project, run_name, config or {}, run_id)

    def _open_tensorboard(self, config: dict, hparam_metrics: tuple[str, ...]):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError:
            raise ConfigError(
                "tracking.tensorboard=true but the tensorboard package is not installed.",
                hint="pip install tensorboard, or set tracking.tensorboard=false.",
            ) from None
        writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        if config:
            # Into this run's own event file (SummaryWriter.add_hparams would start a sub-run).
            for summary in hparams(flat_hparams(config), dict.fromkeys(hparam_metrics, 0.0)):
                writer.file_writer.add_summary(summary)
        return writer

    def _open_wandb(self, project: str, run_name: str, config: dict, run_id: str | None):
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "tracking.wandb=true but the wandb package is not installed.",
                hint="pip install wandb, or set tracking.wandb=false.",
            ) from None
        run = wandb.init(
            project=project,
            name=run_name,
            dir=str(self.out_dir),
            mode=wandb_mode(),
            config=config,
            id=run_id,
            resume="allow" if run_id else None,
        )
        # W&B keeps its own step counter (which must only grow, also across a resume); the charts use ours.
        run.define_metric(self.x_key)
        run.define_metric("*", step_metric=self.x_key)
        return run

    @property
    def wandb_run_id(self) -> str | None:
        return getattr(self._wandb, "id", None) if self._wandb is not None else None

    def checkpoint_meta(self) -> dict:
        """What a checkpoint saves so that a resume continues the same W&B run."""
        return {"wandb_run_id": self.wandb_run_id} if self.wandb_run_id else {}

    def log(self, row: dict) -> None:
        self._jsonl.write_many([row])
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        x = int(row.get(self.x_key, row.get(self.step_key, 0)))
        if self._tb is not None:
            for k, v in numbers.items():
                if k != self.x_key:
                    self._tb.add_scalar(k, v, x)
        if self._wandb is not None:
            self._wandb.log(numbers)

    def log_samples(self, rows: list[dict], x: int) -> None:
        """Sample answers (dicts of one shape, e.g. PPO's ``samples.jsonl`` rows) as a text table at ``x``."""
        if not rows:
            return
        columns = list(rows[0])
        if self._tb is not None:
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
            self._tb.add_text("samples", "\n".join(lines), x)
        if self._wandb is not None:
            import wandb

            table = wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])
            self._wandb.log({"samples": table, self.x_key: x})

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


def _cell(value) -> str:
    """A table cell: one line of text (a Markdown row ends at any line break, and a bare pipe splits it)."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def _saved_wandb_id(checkpoint: Path) -> str | None:
    from vlmppo.checkpoints import read_meta

    return read_meta(checkpoint).get("wandb_run_id")
