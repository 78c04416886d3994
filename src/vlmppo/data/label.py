"""`vlmppo label`: write ``runs/<name>/label/labels.jsonl``, one line per step (action mode) or
transition (score mode), keyed by episode/step. Resumable: keys already labelled are skipped.

Line fields: ``key, episode, step, env_id, labeller, mode, raw`` (the labeller's answer), ``status``
(ok | parse_error | expert_stuck) and the parsed fields: ``action, action_index, thoughts`` (action
mode) or ``score, reason`` (score mode).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmppo.config import Config, run_dir
from vlmppo.data import labellers as lb
from vlmppo.errors import DataError
from vlmppo.io import JsonlWriter, read_jsonl, repair_jsonl_tail, require_file, write_manifest
from vlmppo.locks import locked
from vlmppo.sysinfo import resolve_device


@dataclass
class LabelResult:
    out_dir: Path
    labelled: int
    skipped_existing: int
    parse_errors: int
    total: int


def load_steps(cfg: Config) -> list[dict]:
    """The collected steps, checked to belong to the preset's env."""
    path = require_file(run_dir(cfg) / "collect" / "episodes.jsonl", stage="label", produced_by="collect")
    steps = list(read_jsonl(path))
    envs = {row.get("env_id") for row in steps}
    if envs != {cfg.env.id}:
        raise DataError(
            f"{path} holds steps of {sorted(map(str, envs))}, but the config's env.id is {cfg.env.id!r}.",
            hint="Use the preset the data was collected with, or collect again for this env.",
        )
    return steps


def open_frame(collect_dir: Path, relative: str) -> Image.Image:
    path = collect_dir / relative
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"Frame {path} is missing.", hint="Collect again (`vlmppo collect`).") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"Frame {path} cannot be decoded ({exc}).") from None


@locked("label")
def label(cfg: Config, *, on_progress: Callable[[int, int], None] | None = None) -> LabelResult:
    """Label every collected step with ``cfg.label.labeller`` in ``cfg.label.mode``."""
    from vlmppo.envs import adapter_from_config

    steps = load_steps(cfg)
    out = run_dir(cfg) / "label"
    path = out / "labels.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(path)
    mode = cfg.label.mode
    # Action and score labels of the same step can live side by side in one file: a label's identity
    # is (key, mode).
    existing = {row["key"] for row in read_jsonl(path) if row.get("mode") == mode} if path.exists() else set()
    for row in steps:
        row["key"] = f"{row['episode']:06d}/{row['step']:03d}"
    todo = [row for row in steps if row["key"] not in existing]
    adapter = adapter_from_config(cfg.env)
    rng = np.random.default_rng(cfg.run.seed)
    counter = {"done": 0, "parse_errors": 0}

    def write(writer: JsonlWriter, rows: list[dict]) -> None:
        writer.write_many(rows)
        counter["done"] += len(rows)
        counter["parse_errors"] += sum(r.get("status") == "parse_error" for r in rows)
        if on_progress:
            on_progress(counter["done"], len(todo))

    with JsonlWriter(path) as writer:
        if cfg.label.labeller == "expert":
            _label_with_expert(cfg, steps, existing, adapter, lambda rows: write(writer, rows))
        else:
            labeller = _model_labeller(cfg, adapter, rng)
            batch = cfg.label.batch_size if cfg.label.labeller == "hf" else cfg.label.max_concurrency * 4
            collect_dir = run_dir(cfg) / "collect"
            for start in range(0, len(todo), batch):
                chunk = todo[start : start + batch]
                requests = [
                    labeller.request(
                        s,
                        open_frame(collect_dir, s["frame"]),
                        open_frame(collect_dir, s["next_frame"]) if cfg.label.mode == "score" else None,
                    )
                    for s in chunk
                ]
                answers = labeller.answer(requests)
                write(
                    writer,
                    [
                        lb.label_row(_key(s), cfg.label.labeller, cfg.label.mode, a, adapter, rng)
                        for s, a in zip(chunk, answers, strict=True)
                    ],
                )
    result = LabelResult(out, counter["done"], len(existing), counter["parse_errors"], len(steps))
    label_config = cfg.label.model_dump(mode="json")
    write_manifest(
        out,
        stage="label",
        config=cfg.model_dump(mode="json"),
        inputs={"episodes": run_dir(cfg) / "collect" / "episodes.jsonl"},
        env_id=cfg.env.id,
        labeller=label_config["labeller"],
        mode=cfg.label.mode,
        # hf: explicit settings, or the labeller model's own generation_config.json (label.generation).
        generation=cfg.label.generation if cfg.label.labeller == "hf" else None,
        counts={
            "labelled_now": result.labelled,
            "kept_from_before": result.skipped_existing,
            "parse_errors_now": result.parse_errors,
            "steps": result.total,
        },
    )
    return result


def _key(step: dict) -> dict:
    return {"key": step["key"], "episode": step["episode"], "step": step["step"], "env_id": step["env_id"]}


def _model_labeller(cfg: Config, adapter, rng):
    lc = cfg.label
    if lc.labeller == "openai":
        from vlmppo.data.openai_client import ChatClient

        if not lc.model:
            raise DataError(
                "label.model is not set: name the model the server serves, e.g. label.model=Qwen2.5-VL-32B-Instruct."
            )
        client = ChatClient(lc.base_url, lc.model, lc.api_key_env, lc.timeout_s, lc.max_retries, lc.backoff_s)
        return lb.OpenAILabeller(
            client,
            adapter,
            lc.mode,
            rng,
            temperature=lc.temperature,
            max_new_tokens=lc.max_new_tokens,
            max_concurrency=lc.max_concurrency,
        )
    from vlmppo.models.generation import load_generator

    model_cfg = cfg.model.model_copy(
        update={"path": lc.model or cfg.model.path, "family": lc.family or cfg.model.family, "lora": None}
    )
    generator = load_generator(model_cfg, device=resolve_device(cfg), generation=lc.generation)
    return lb.HfLabeller(
        generator, adapter, lc.mode, rng, temperature=lc.temperature, max_new_tokens=lc.max_new_tokens
    )


def _label_with_expert(cfg: Config, steps: list[dict], existing: set, adapter, write) -> None:
    """Replay each episode from its seed with the recorded actions and ask the expert at every step.

    Replaying (rather than reading pixels or trusting stored state) gives the expert the live env it
    needs (MiniGrid's planner reads the grid) and checks that the data matches this env exactly.
    """
    from vlmppo.envs import make_env_from_config

    env = make_env_from_config(cfg.env)
    episodes: dict[int, list[dict]] = {}
    for row in steps:
        episodes.setdefault(row["episode"], []).append(row)
    for rows in episodes.values():
        if all(r["key"] in existing for r in rows):
            continue
        _, info = env.reset(seed=rows[0]["seed"])
        out = []
        for row in rows:
            state = lb_state(info)
            if state != row["state"]:
                raise DataError(
                    f"Replaying episode {row['episode']} (seed {row['seed']}) does not reproduce step {row['step']} "
                    f"of the collected data: the env or its version differs from the one that recorded it.",
                    hint="Collect again with this env (`vlmppo collect`).",
                )
            if cfg.label.mode == "action":
                fields = lb.expert_action_fields(adapter, env, info)
            _, reward, _, _, info_after = env.step(adapter.to_env_action(row["action"]))
            if cfg.label.mode == "score":
                fields = lb.expert_score_fields(
                    adapter, row["state"], row["action"], lb_state(info_after), reward
                )
            info = info_after
            if row["key"] not in existing:
                out.append({**_key(row), "labeller": "expert", "mode": cfg.label.mode, **fields})
        write(out)


def lb_state(info: dict) -> dict:
    from vlmppo.envs.episodes import jsonable

    return jsonable(info)
