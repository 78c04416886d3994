"""The names every layer agrees on, each said once: the pipeline's stages and the model families.

Plain data that imports nothing of vlmppo, so that ``vlmppo --help`` reads it at start-up (one command per
stage) and the config layer validates against it without importing models. ``STAGES`` is read by the CLI,
the pipeline (`vlmppo.pipeline`), SLURM (`vlmppo.slurm`) and ``--from/--to`` (`vlmppo.config.plan`);
``FAMILIES`` by the config schema (``model.family``), ``vlmppo model init`` and the model registry
(`vlmppo.models.families`: one adapter per name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        name: The command (``vlmppo NAME``) and the stage's key in ``runs/<name>/pipeline.json``.
        kind: ``data`` (collect, label, preprocess: one folder with a ``manifest.json``), ``training``
            (trains and checkpoints: one process per GPU under SLURM, continued with ``--resume auto``) or
            ``eval``.
        sections: The config sections it reads (and ``run.seed``, which every stage reads).
        folder: The folder under ``runs/<name>/`` it writes, which the pipeline moves aside before running the
            stage again over an old output; None for eval, which writes one folder per evaluation in ``eval/``.
    """

    name: str
    kind: Literal["data", "training", "eval"]
    sections: tuple[str, ...]
    folder: str | None


_PIPELINE = (
    Stage("collect", "data", ("env", "collect"), "collect"),
    Stage("label", "data", ("env", "label"), "label"),
    Stage("preprocess", "data", ("env", "preprocess"), "data"),
    Stage("sft", "training", ("model", "sft"), "sft"),
    Stage("ppo", "training", ("env", "model", "ppo"), "ppo"),
    Stage("eval", "eval", ("env", "model", "eval"), None),
)
_BY_NAME = {s.name: s for s in _PIPELINE}

STAGES: tuple[str, ...] = tuple(_BY_NAME)  # in pipeline order
DATA_STAGES: tuple[str, ...] = tuple(s.name for s in _PIPELINE if s.kind == "data")
TRAINING_STAGES: tuple[str, ...] = tuple(s.name for s in _PIPELINE if s.kind == "training")


def stage_info(name: str) -> Stage:
    """The `Stage` called ``name`` (KeyError for a name not in ``STAGES``: check user input against it first)."""
    return _BY_NAME[name]


# Model families, by the name ``model.family`` takes; each has one adapter in `vlmppo.models.families`.
FAMILIES: tuple[str, ...] = ("qwen2-vl", "qwen2.5-vl", "llava", "llava-next")
