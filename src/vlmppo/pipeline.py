"""`vlmppo pipeline`: collect -> label -> preprocess -> sft -> ppo -> eval with one config, in-process.

The orchestrator: the one module that calls every stage's entry point, a layer above the stage engines;
`vlmppo pipeline` calls it, and the SLURM renderer (`vlmppo.slurm.render`) asks it how PPO would start.

A stage is skipped when its output is complete and nothing it depends on changed. What it depends on is
recorded in ``runs/<name>/pipeline.json`` after the stage ran: the SHA-256 of the config sections it reads
(plus ``run.seed``), of its input files (the previous stage's output) and of its output files. A stage
re-runs when any of those differ, or its output is missing; because a re-run changes its output files,
every later stage then re-runs too. Collect, label and preprocess also count as done when their own
``manifest.json`` (config and input hashes) matches, so a stage run by hand is not repeated. A config that
differs from the recorded one only by settings newer than the record, at their defaults, is the same config
(`vlmppo.config.compare`): upgrading vlmppo does not re-run finished stages, and a re-run names what changed.

The eval stage first evaluates the expert and random baselines (``eval/expert``, ``eval/random``) when
this run has none for the same task, so that the report shows where the agent stands between them.

A stage that re-runs over an older output first moves that output aside to ``<folder>.old-<time>``
(collect and label would otherwise resume into it, and SFT refuses to start over its checkpoints).

The pipeline holds the run's ``pipeline`` lock throughout, and each stage's own lock (`vlmppo.locks`) from
before it moves an old output aside until the stage ends: a ``vlmppo ppo`` started by hand on the same run
makes the pipeline's PPO stage fail with that process's name, instead of both writing one folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from vlmppo.config import WHERE_IT_STOPS, Config, run_dir
from vlmppo.config.plan import stage_range
from vlmppo.io import atomic_write_json, file_sha256
from vlmppo.locks import locked, stage_lock
from vlmppo.registry import DATA_STAGES, stage_info

RECORD = "pipeline.json"
# The files that make a data stage's output complete (besides its manifest.json).
DATA_OUTPUTS = {
    "collect": ("episodes.jsonl",),
    "label": ("labels.jsonl",),
    "preprocess": ("train.jsonl", "val.jsonl"),
}


@dataclass
class StageOutcome:
    stage: str
    ran: bool
    reason: str  # why it ran or was skipped ("" for a first run)
    seconds: float = 0.0
    complete: bool = True  # False: stopped (a signal) before its output was complete


@dataclass
class PipelineResult:
    run_dir: Path
    outcomes: list[StageOutcome] = field(default_factory=list)
    report: Path | None = None  # the eval's report.html (one file, images inline)
    eval_metrics: dict | None = None  # the agent's metrics.json, when eval ran or was up to date
    baselines: dict[str, dict] = field(default_factory=dict)  # expert/random metrics of the same task


def stage_config(cfg: Config, stage: str) -> dict:
    dump = cfg.model_dump(mode="json")
    sections = {s: {k: v for k, v in dump[s].items() if k not in WHERE_IT_STOPS.get(s, ())}
                for s in stage_info(stage).sections}  # fmt: skip
    return {"seed": dump["run"]["seed"], **sections}


def config_hash(cfg: Config, stage: str) -> str:
    text = json.dumps(stage_config(cfg, stage), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def stage_changes(recorded: dict | None, cfg: Config, stage: str) -> list[str] | None:
    """``key: old -> new`` for each setting the stage reads that differs from a recorded ``stage_config``
    (`vlmppo.config.compare`: settings newer than the record count only away from their defaults); None when
    nothing was recorded."""
    from vlmppo.config.compare import section_changes

    if not isinstance(recorded, dict):
        return None
    mine = stage_config(cfg, stage)
    changes = section_changes(recorded, mine, stage_info(stage).sections)
    if recorded.get("seed") != mine["seed"]:
        changes.insert(0, f"run.seed: {recorded.get('seed')!r} -> {mine['seed']!r}")
    return changes


def _listed(changes: list[str] | None) -> str:
    """``, sft.lr: 0.0005 -> 0.0001 and 2 more``: the first change and how many others."""
    if not changes:
        return ""
    more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
    return f", {changes[0]}{more}"


def _weights(folder: Path | None) -> list[Path]:
    if folder is None:
        return []
    return [folder / f for f in ("adapter_model.safetensors", "model.safetensors", "value_head.safetensors")
            if (folder / f).is_file()]  # fmt: skip


def _latest(root: Path, stage: str) -> Path | None:
    from vlmppo.checkpoints import latest_checkpoint

    return latest_checkpoint(root / stage / "checkpoints")


def _eval_checkpoint(cfg: Config, root: Path) -> Path | None:
    from vlmppo.checkpoints import resolve_checkpoint
    from vlmppo.errors import CheckpointError

    try:
        return resolve_checkpoint(root, cfg.eval.ckpt or "last")
    except CheckpointError:
        return None


def inputs_of(cfg: Config, stage: str, root: Path) -> list[Path]:
    """Files a stage reads (missing ones are left out: the stage itself says what is missing)."""
    files = {
        "collect": [],
        "label": [root / "collect/episodes.jsonl"],
        "preprocess": [root / "collect/episodes.jsonl", root / "label/labels.jsonl"],
        "sft": [root / "data/train.jsonl", root / "data/val.jsonl"],
        "ppo": _weights(_latest(root, "sft")) if cfg.ppo.init_from == "sft" else [],
        "eval": _weights(_eval_checkpoint(cfg, root)),
    }[stage]
    return [f for f in files if f.is_file()]


def outputs_of(cfg: Config, stage: str, root: Path) -> list[Path] | None:
    """The files that make a stage's output complete; None when any is missing."""
    if stage in DATA_STAGES:
        folder = root / stage_info(stage).folder
        files = [folder / f for f in DATA_OUTPUTS[stage]]
        return files if all(f.is_file() for f in files) and (folder / "manifest.json").is_file() else None
    if stage == "sft":
        latest = _latest(root, "sft")
        done = latest is not None and (root / "sft/checkpoints/final").is_dir()
        return _weights(latest) or None if done else None
    if stage == "ppo":
        return _weights(_latest(root, "ppo")) or None
    from vlmppo.eval.runner import checkpoint_name

    ckpt = _eval_checkpoint(cfg, root)
    if ckpt is None:
        return None
    name = checkpoint_name(root, ckpt) + ("" if cfg.eval.greedy else "-sampled")
    files = [root / "eval" / name / f for f in ("metrics.json", "report.md")]
    return files if all(f.is_file() for f in files) else None


def _hashes(files: list[Path], root: Path) -> dict[str, str]:
    return {os.path.relpath(f, root): file_sha256(f) for f in files}


def _read_record(root: Path) -> dict:
    path = root / RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}  # a damaged record only costs re-running stages


def up_to_date(cfg: Config, stage: str, root: Path, record: dict) -> tuple[bool, str]:
    """Whether ``stage`` can be skipped, and why (or why not)."""
    outputs = outputs_of(cfg, stage, root)
    if outputs is None:
        return False, "no complete output yet" if _started_before(stage, root, record) else ""
    inputs = _hashes(inputs_of(cfg, stage, root), root)
    entry = record.get("stages", {}).get(stage)
    if entry is None:
        return _manifest_matches(cfg, stage, root, inputs)
    if "outputs" not in entry:
        return False, "its last run did not finish"
    if entry.get("config_sha256") != config_hash(cfg, stage):
        changes = stage_changes(entry.get("config"), cfg, stage)
        if changes is None or changes:  # (no changes: a record from before settings this version added)
            return False, "its config changed" + _listed(changes)
    if entry.get("inputs") != inputs:
        return False, "its inputs changed"
    if entry.get("outputs") != _hashes(outputs, root):
        return False, "its output changed since the pipeline wrote it"
    return True, "up to date"


def _started_before(stage: str, root: Path, record: dict) -> bool:
    """Whether an earlier call ran (or began) ``stage``: on a first run there is nothing to explain."""
    return stage in record.get("stages", {}) or (root / (stage_info(stage).folder or "eval")).exists()


def _manifest_matches(cfg: Config, stage: str, root: Path, inputs: dict[str, str]) -> tuple[bool, str]:
    """A data stage run by hand (no pipeline record): trust its manifest if config and inputs match."""
    if stage not in DATA_STAGES:
        return False, "no record of how its output was made"
    try:
        manifest = json.loads((root / stage_info(stage).folder / "manifest.json").read_text())
    except ValueError:
        return False, "its manifest.json cannot be read"
    recorded = manifest.get("config") or {}
    theirs = {"seed": recorded.get("run", {}).get("seed"), **recorded}
    changes = stage_changes(theirs, cfg, stage)
    if changes:
        return False, "its manifest was written with another config" + _listed(changes)
    if sorted(v["sha256"] for v in manifest.get("inputs", {}).values()) != sorted(inputs.values()):
        return False, "its inputs changed since its manifest was written"
    return True, "up to date (its manifest matches)"


def _move_aside(root: Path, stage: str) -> Path | None:
    name = stage_info(stage).folder
    folder = root / (name or "")
    if name is None or not folder.exists():
        return None
    target = folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():
        target = folder.with_name(f"{folder.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(folder, target)
    return target


def _run_stage(cfg: Config, stage: str, progress, resume: bool):
    """Call the stage's engine function; returns its result."""
    with progress(stage) if progress else nullcontext(None) as advance:

        def report(done, total, *row):
            if advance:
                advance(done, total, *row)  # (the stage's metrics row, for its status line)

        if stage == "collect":
            from vlmppo.data.collect import collect

            return collect(cfg, on_episode=report)
        if stage == "label":
            from vlmppo.data.label import label

            return label(cfg, on_progress=report)
        if stage == "preprocess":
            from vlmppo.data.preprocess import preprocess

            return preprocess(cfg)
        if stage == "sft":
            from vlmppo.eval.live import greedy_eval
            from vlmppo.sft import train_sft

            return train_sft(cfg, on_step=report, resume="auto" if resume else None, evaluate_env=greedy_eval)
        if stage == "ppo":
            from vlmppo.eval.live import greedy_eval
            from vlmppo.rl import train_ppo

            return train_ppo(cfg, on_update=report, resume="auto" if resume else None, evaluate=greedy_eval)
        from vlmppo.eval.metrics import BASELINES
        from vlmppo.eval.report import read_baselines
        from vlmppo.eval.runner import evaluate

        # The expert and random baselines the report places the agent between: played once per task
        # (no model, so seconds), again only when missing or made with other env settings.
        found, _ = read_baselines(run_dir(cfg), cfg.env.model_dump(mode="json"))
        for policy in BASELINES:
            if policy not in found:
                evaluate(cfg, policy=policy, overwrite=True)
        return evaluate(cfg, on_episode=report, overwrite=True)  # the pipeline's own eval folder


def pipeline_config(cfg: Config, stages: list[str]) -> Config:
    """The config the stages get: PPO starts from this run's SFT checkpoint when ``ppo.init_from`` is null
    and SFT runs in this pipeline or already has a checkpoint."""
    if cfg.ppo.init_from is None and ("sft" in stages or _latest(run_dir(cfg), "sft") is not None):
        return cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"init_from": "sft"})})
    return cfg


@locked("pipeline")
def run_pipeline(
    cfg: Config,
    *,
    start: str | None = None,
    stop: str | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    progress=None,
) -> PipelineResult:
    """Run the stages from ``start`` to ``stop``, skipping those that are up to date.

    Args:
        on_stage: Called with (stage, message) when a stage is skipped, starts or ends.
        progress: A context-manager factory ``progress(stage) -> advance(done, total[, row])`` (a progress
            bar); SFT and PPO pass their metrics row of the step or update.

    Returns:
        What each stage did and, when eval ran or was up to date, the report's path, the agent's metrics and
        the baselines of the same task.

    PPO starts from this run's SFT checkpoint when ``ppo.init_from`` is null and SFT is part of the range
    or has a checkpoint; set ``ppo.init_from`` to choose otherwise.
    """
    stages = stage_range(start, stop)
    cfg = pipeline_config(cfg, stages)
    root = run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    result = PipelineResult(root)
    say = on_stage or (lambda stage, message: None)
    for stage in stages:
        record = _read_record(root)
        fresh, reason = up_to_date(cfg, stage, root, record)
        if fresh:
            if stage not in record.get("stages", {}):  # adopted from its own manifest: record it now
                record.setdefault("stages", {})[stage] = {
                    **_record_entry(cfg, stage, root),
                    "outputs": _hashes(outputs_of(cfg, stage, root), root),
                    "adopted": "its manifest matched",
                }
                atomic_write_json(root / RECORD, record)
            say(stage, f"skipped: {reason}")
            result.outcomes.append(StageOutcome(stage, False, reason))
            continue
        outcome = _run_recorded(cfg, stage, root, record, reason, say, progress)
        result.outcomes.append(outcome)
        if not outcome.complete:
            return result
    if "eval" in stages:
        _add_eval_results(cfg, root, result)
    return result


def _record_entry(cfg: Config, stage: str, root: Path) -> dict:
    """What ``pipeline.json`` holds of a stage before it runs: its config (and hash) and its inputs' hashes."""
    return {
        "config_sha256": config_hash(cfg, stage),
        "config": stage_config(cfg, stage),
        "inputs": _hashes(inputs_of(cfg, stage, root), root),
    }


def _run_recorded(
    cfg: Config, stage: str, root: Path, record: dict, reason: str, say, progress
) -> StageOutcome:
    """Run one stage that is not up to date, under its lock; record when it started and, once its output is
    complete, what it made. A stage the pipeline started with this very config and inputs and that did not
    finish (killed, preempted) is continued instead of started over (collect and label resume by themselves).
    """
    entry = _record_entry(cfg, stage, root)
    previous = record.get("stages", {}).get(stage) or {}
    resume = "outputs" not in previous and all(
        previous.get(k) == entry[k] for k in ("config_sha256", "inputs")
    )
    with stage_lock(root, stage) if stage_info(stage).folder else nullcontext():
        moved = None if resume else _move_aside(root, stage)
        detail = "resuming the interrupted run" if resume else reason
        moved_note = f"; the old output was moved to {moved}" if moved else ""
        say(stage, "running" + (f": {detail}" if detail else "") + moved_note)
        record.setdefault("stages", {})[stage] = {**entry, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(root / RECORD, record)
        t0 = time.perf_counter()
        out = _run_stage(cfg, stage, progress, resume)
        seconds = time.perf_counter() - t0
    outputs = outputs_of(cfg, stage, root)
    stopped_by = getattr(out, "stopped_by", None) or ""
    if outputs is None or stopped_by:
        if stopped_by.startswith("sft.stop_at_step"):
            note = f" ({stopped_by}, after step {out.steps}); run the pipeline again without it to continue"
        else:
            note = "; run the pipeline again to continue"
        say(stage, f"stopped without a complete output after {seconds:.1f} s{note}")
        return StageOutcome(stage, True, detail, seconds, complete=False)
    finished = {"outputs": _hashes(outputs, root), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record["stages"][stage].update({**finished, "seconds": round(seconds, 2)})
    atomic_write_json(root / RECORD, record)
    say(stage, f"done in {seconds:.1f} s")
    return StageOutcome(stage, True, detail, seconds)


def _add_eval_results(cfg: Config, root: Path, result: PipelineResult) -> None:
    from vlmppo.eval.report import read_baselines

    outputs = outputs_of(cfg, "eval", root)
    if outputs is None:
        return
    metrics_file, report_md = outputs
    result.report = report_md.with_name("report.html")
    result.eval_metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    result.baselines, _ = read_baselines(root, cfg.env.model_dump(mode="json"))
