"""What a job asks SLURM for, checked before anything is written or submitted.

The schema already rejects single bad values (negative GPUs, more GPUs per node than the cluster has); this
module rejects combinations and formats that sbatch would refuse or that would waste an allocation, and
reports them all at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlmppo.config.schema import Config
from vlmppo.errors import SlurmError
from vlmppo.registry import STAGES, TRAINING_STAGES

# `vlmppo slurm submit pipeline`: one job per stage of the range, chained.
PIPELINE = "pipeline"

_TIME = re.compile(
    r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)
_MEM = re.compile(r"^\d+[KMGTkmgt]?$")
_JOB_ID = re.compile(r"^\d+(?:_\d+)?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Layout:
    """How a stage's processes are laid out: ``nodes`` x ``gpus_per_node``, and whether a launcher is needed."""

    nodes: int
    gpus_per_node: int
    cpu_processes: int = 0  # per node, on a CPU-only job (slurm.cpu_processes)

    @property
    def per_node(self) -> int:
        """Processes per node: one per GPU; on a CPU-only job ``cpu_processes`` (or one)."""
        return self.gpus_per_node or max(self.cpu_processes, 1)

    @property
    def processes(self) -> int:
        """One process per GPU; a CPU-only job is one process, or ``cpu_processes`` per node."""
        return self.nodes * self.per_node

    @property
    def distributed(self) -> bool:
        return self.processes > 1


def layout(cfg: Config, stage: str) -> Layout:
    """Training stages use every GPU of every node; the other stages are one process on one node.

    collect, label, preprocess and eval are single processes (a local labeller shards one model over the
    node's GPUs itself), so running them on more nodes would only leave nodes idle.
    """
    if stage in TRAINING_STAGES:
        cpu = cfg.slurm.cpu_processes if cfg.slurm.gpus_per_node == 0 else 0
        return Layout(cfg.slurm.nodes, cfg.slurm.gpus_per_node, cpu)
    return Layout(1, cfg.slurm.gpus_per_node)


def time_limit_seconds(text: str) -> int | None:
    """Seconds in a SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``); None = no limit."""
    if text.strip().upper() in ("INFINITE", "UNLIMITED"):
        return None
    match = _TIME.match(text.strip())
    if match is None:
        raise ValueError(text)
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "d" in g:
        return ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    if "c" in g:  # HH:MM:SS
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]
    return g["a"] * 60 + g.get("b", 0)  # MM or MM:SS


def parse_seeds(text: str | None) -> list[int] | None:
    """``"1,2,3"`` -> ``[1, 2, 3]``; distinct integers, at least one."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise SlurmError(
            f"--array-seeds '{text}' is not a comma-separated list of integers.",
            hint="Example: --array-seeds 1,2,3.",
        ) from None
    if not seeds:
        raise SlurmError("--array-seeds is empty.", hint="Example: --array-seeds 1,2,3.")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SlurmError(f"--array-seeds repeats {repeated}: each seed gets its own run, so list each once.")
    return seeds


def check_job_id(text: str) -> str:
    """A SLURM job id (``123`` or an array task ``123_4``) to depend on."""
    text = text.strip()
    if not _JOB_ID.match(text):
        raise SlurmError(
            f"'{text}' is not a SLURM job id.", hint="Job ids look like 12345 (or 12345_0 for an array task)."
        )
    return text


def check_request(cfg: Config, stage: str) -> None:
    """Raise SlurmError listing every impossible or malformed part of the job request for ``stage``."""
    s = cfg.slurm
    problems: list[str] = []
    if stage not in STAGES:
        problems.append(f"unknown stage '{stage}' (choose from {', '.join(STAGES)}, or {PIPELINE})")
    if stage in TRAINING_STAGES and s.nodes > 1 and s.gpus_per_node == 0:
        problems.append(
            f"slurm.nodes={s.nodes} with slurm.gpus_per_node=0: a run over several nodes needs GPUs "
            "(one process per GPU); set slurm.gpus_per_node or slurm.nodes=1"
        )
    if stage == "ppo" and cfg.ppo.launch == "zero3":
        from vlmppo.sft.launching import PPO_ZERO3

        problems.append(PPO_ZERO3.removesuffix(".") + "; use ppo.launch=zero2 or ddp")
    launch = getattr(cfg, stage).launch if stage in ("sft", "ppo") else "single"
    if s.gpus_per_node == 0 and s.cpu_processes > 1 and launch.startswith("zero"):
        problems.append(
            f"slurm.cpu_processes={s.cpu_processes} with {stage}.launch={launch}: DeepSpeed needs GPUs; CPU "
            f"processes run data parallel on gloo ({stage}.launch=ddp)"
        )
    try:
        limit = time_limit_seconds(s.time)
    except ValueError:
        limit = None
        problems.append(
            f"slurm.time '{s.time}' is not a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)"
        )
    if limit is not None and limit <= s.signal_grace_s:
        problems.append(
            f"slurm.signal_grace_s ({s.signal_grace_s}) is not shorter than slurm.time ('{s.time}' = {limit} s): "
            "the save-and-requeue signal would come before the job could do anything"
        )
    if s.mem is not None and not _MEM.match(s.mem):
        problems.append(
            f"slurm.mem '{s.mem}' is not a SLURM memory size (e.g. 64G, 4000M; 0 = all of the node)"
        )
    for i, option in enumerate(s.extra_sbatch):
        if not option.startswith("-"):
            problems.append(
                f"slurm.extra_sbatch[{i}] '{option}' is not an sbatch option (they start with '-')"
            )
    values = {
        "run.name": cfg.run.name,
        "run.output_dir": cfg.run.output_dir,
        "slurm.partition": s.partition,
        "slurm.account": s.account,
        "slurm.qos": s.qos,
        "slurm.python": s.python,
        "slurm.template": s.template,
        **{f"slurm.extra_sbatch[{i}]": v for i, v in enumerate(s.extra_sbatch)},
    }
    for key, value in values.items():
        if value is not None and _CONTROL.search(value):
            problems.append(
                f"{key} {value!r} holds a line break or control character, which a job script cannot carry"
            )
        elif value is not None and not value.strip():
            problems.append(f"{key} is empty")
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise SlurmError(
            f"Impossible SLURM request for `vlmppo {stage}`, {count}:\n  - " + "\n  - ".join(problems),
            hint="Fix the preset's slurm: section or override it, e.g. slurm.gpus_per_node=1.",
        )
