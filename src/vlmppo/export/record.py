"""What a run says about one of its checkpoints, gathered for the model card: the base model, the env, the
pipeline's stages with their manifests, the evaluations of this checkpoint and of the baselines, and the
commands that made them.

Everything is read from files the stages wrote (``vlmppo.json``, ``config.yaml``, ``*/manifest.json``,
``pipeline.json``, ``eval/*/metrics.json``); a run copied without some of them gives a card without those
parts, never an error.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import yaml

from vlmppo.checkpoints import complete_checkpoints, read_meta
from vlmppo.registry import STAGES, stage_info

# Counters and metrics of a training checkpoint worth a line on the card.
_COUNTERS = ("step", "update", "env_steps", "epoch", "optimizer_steps")
_EVAL_KEYS = ("episodes", "success_rate", "success_ci95", "solved_rate", "solved_ci95", "return_mean",
              "length_mean", "invalid_action_rate", "decoding", "seeds")  # fmt: skip


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_root_of(ckpt: Path) -> Path | None:
    """``runs/<name>`` for ``runs/<name>/<stage>/checkpoints/NNNNNN``; None for a folder outside a run."""
    if ckpt.parent.name == "checkpoints" and ckpt.parents[1].name in ("sft", "ppo"):
        return ckpt.parents[2]
    return None


def preset_of(command: str | None) -> str | None:
    """The ``--preset``/``-p`` a recorded command line gave, if any."""
    if not command:
        return None
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word in ("--preset", "-p") and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--preset="):
            return word.split("=", 1)[1]
    return None


def _data_stage(root: Path, stage: str) -> dict | None:
    manifest = _json(root / stage_info(stage).folder / "manifest.json")
    if not manifest:
        return None
    keep = ("created", "command", "counts", "policy", "labeller", "success_rate", "solved_rate", "seeds")
    return {"stage": stage, **{k: manifest[k] for k in keep if k in manifest}}


def _training_stage(root: Path, stage: str, ckpt: Path) -> dict | None:
    mine = ckpt.parents[1].name == stage and run_root_of(ckpt) == root
    found = ckpt if mine else (complete_checkpoints(root / stage / "checkpoints") or [None])[-1]
    if found is None:
        return None
    meta = read_meta(found)
    return {
        "stage": stage,
        "checkpoint": found.name,
        "created": meta.get("created"),
        "command": meta.get("command"),
        "counts": {k: meta[k] for k in _COUNTERS if k in meta},
        "exported": mine,
    }


def _evaluations(root: Path, ckpt: Path) -> tuple[dict | None, list[dict]]:
    """This checkpoint's newest evaluation and the baselines' (expert, random...), from ``eval/*``."""
    agent, baselines = None, []
    for folder in sorted((root / "eval").glob("*/")):
        metrics = _json(folder / "metrics.json")
        if "success_rate" not in metrics:
            continue
        row = {"name": folder.name, **{k: metrics[k] for k in _EVAL_KEYS if k in metrics}}
        row["command"] = _json(folder / "manifest.json").get("command")
        if metrics.get("policy") != "checkpoint":
            baselines.append(row)
        elif metrics.get("checkpoint") and Path(metrics["checkpoint"]).resolve() == ckpt.resolve():
            episode = sorted((folder / "trajectories").glob("episode-*.png"))
            row["episode_frames"] = [str(p) for p in episode[:1]]
            row["episode_gif"] = [str(p) for p in sorted((folder / "trajectories").glob("episode-*.gif"))[:1]]
            agent = row
    return agent, baselines


def reproduce_commands(stages: list[dict], evaluation: dict | None) -> list[str]:
    """The commands that made the checkpoint and its evaluation, in pipeline order, each once."""
    commands = [s.get("command") for s in stages] + [evaluation.get("command") if evaluation else None]
    return list(dict.fromkeys(c for c in commands if c))


def read_record(ckpt: Path) -> dict:
    """Everything the card shows about checkpoint ``ckpt`` (a whole checkpoint folder), as plain JSON data."""
    ckpt = Path(ckpt).resolve()
    meta = read_meta(ckpt)
    config_file = ckpt / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    config = config if isinstance(config, dict) else {}
    env = config.get("env") or {}
    root = run_root_of(ckpt)
    stages: list[dict] = []
    agent, baselines = None, []
    if root is not None:
        for stage in STAGES:
            kind = stage_info(stage).kind
            entry = _data_stage(root, stage) if kind == "data" else None
            if kind == "training":
                entry = _training_stage(root, stage, ckpt)
            if entry is not None:
                stages.append(entry)
        agent, baselines = _evaluations(root, ckpt)
    pipeline = _json(root / "pipeline.json").get("stages", {}) if root else {}
    for entry in stages:
        recorded = pipeline.get(entry["stage"]) or {}
        entry["seconds"] = recorded.get("seconds")
    return {
        "checkpoint": str(ckpt),
        "run": root.name if root else None,
        "stage": meta.get("stage"),
        "family": meta.get("family") or (config.get("model") or {}).get("family"),
        "base_model": meta.get("base_model") or (config.get("model") or {}).get("path"),
        "lora": (config.get("model") or {}).get("lora") is not None
        and (ckpt / "adapter_config.json").is_file(),
        "counts": {k: meta[k] for k in _COUNTERS if k in meta},
        "env": {k: env.get(k) for k in ("id", "prompt", "adapter", "max_episode_steps") if k in env},
        "preset": preset_of(meta.get("command"))
        or next((p for p in map(preset_of, (s.get("command") for s in stages)) if p), None),
        "stages": stages,
        "evaluation": agent,
        "baselines": baselines,
        "commands": reproduce_commands(stages, agent),
        "versions": meta.get("versions", {}),
        "git_sha": meta.get("git_sha"),
    }
