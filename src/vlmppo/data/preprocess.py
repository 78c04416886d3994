"""`vlmppo preprocess`: labels + frames → the SFT dataset ``runs/<name>/data/{train,val}.jsonl``.

Each line is in the "messages + images" layout of TRL's vision SFT datasets::

    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                  {"role": "assistant", "content": [{"type": "text", "text": ANSWER_JSON}]}],
     "images": ["images/000003/002.png"], "episode": 3, "step": 2, "action": "+"}

The folder is self-contained: the frames it uses are hard-linked (copied where links are not possible)
into ``data/images/``, and image paths are relative to ``data/``, so ``data/`` can be moved, copied or
read without the collect folder. ``preprocess.format=llamafactory`` also writes LLaMA-Factory's files
(`vlmppo.data.llamafactory`). The split is by episode, never by step, so no episode has frames on both
sides.

With ``env.history: K`` an example starts with its episode's K earlier steps as the model will see them in
PPO and eval (``models.inputs.conversation``): a user turn with the step's frame, an assistant turn with its
answer (the label's, in the prompt's format, else what was done), then the example's own turn; ``images``
lists the frames in that order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmppo.config import Config, run_dir
from vlmppo.errors import DataError
from vlmppo.io import atomic_replace_dir, atomic_write_text, read_jsonl, require_file, write_manifest
from vlmppo.locks import locked


@dataclass
class PreprocessResult:
    out_dir: Path
    train: int
    val: int
    dropped: Counter = field(default_factory=Counter)
    actions: Counter = field(default_factory=Counter)
    skipped_lines: list = field(default_factory=list)


def sft_example(prompt: str, answer: str, image: str, history: list[tuple[str, str]] = (), **meta) -> dict:
    """One dataset line; ``history``: earlier turns as (image path, answer), oldest first."""
    from vlmppo.models.inputs import Turn, conversation

    earlier = [Turn(None, past_answer) for _, past_answer in history]
    return {
        "messages": [
            *conversation(prompt, earlier),
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [past_image for past_image, _ in history] + [image],
        **meta,
    }


@locked("preprocess")
def preprocess(cfg: Config) -> PreprocessResult:
    """Filter, deduplicate, balance and split the labelled steps; write train/val JSONL atomically."""
    pc = cfg.preprocess
    root = run_dir(cfg)
    steps_path = require_file(root / "collect" / "episodes.jsonl", stage="preprocess", produced_by="collect")
    labels_path = require_file(root / "label" / "labels.jsonl", stage="preprocess", produced_by="label")
    skipped: list = []
    steps = {
        (r["episode"], r["step"]): r for r in read_jsonl(steps_path, on_error=pc.on_error, skipped=skipped)
    }
    labels = list(read_jsonl(labels_path, on_error=pc.on_error, skipped=skipped))
    label_envs = {r.get("env_id") for r in labels}
    if label_envs - {cfg.env.id}:
        raise DataError(
            f"{labels_path} holds labels for {sorted(map(str, label_envs))}, but the config's env.id is "
            f"{cfg.env.id!r}.",
            hint="Label again with this preset, or use the preset the labels were made with.",
        )
    dropped: Counter = Counter()
    kept, sources = _examples(cfg, root, steps, labels, dropped)
    if pc.balance_actions and kept:
        kept = _balance(kept, np.random.default_rng(pc.split_seed), dropped)
    if not kept:
        n_action = len({(r["episode"], r["step"]) for r in labels if r.get("mode") == "action"})
        raise DataError(
            f"Preprocessing kept no example out of {n_action} action labels "
            f"(dropped: {dict(dropped) or 'none; are the labels in score mode only?'}).",
            hint="Relax the filters (preprocess.only_success, preprocess.min_score) or label in action mode.",
        )
    train, val = _split_by_episode(kept, pc.val_fraction, pc.split_seed)
    data_dir = root / "data"
    _write_dataset(data_dir, train, val, sources, pc.format)
    actions = Counter(r["action"] for r in kept)
    result = PreprocessResult(data_dir, len(train), len(val), dropped, actions, skipped)
    write_manifest(
        data_dir,
        stage="preprocess",
        config=cfg.model_dump(mode="json"),
        inputs={"episodes": steps_path, "labels": labels_path},
        env_id=cfg.env.id,
        counts={
            "train": len(train),
            "val": len(val),
            "dropped": dict(dropped),
            "corrupt_lines_skipped": len(skipped),
        },
        actions=dict(actions),
    )
    return result


def _examples(cfg: Config, root: Path, steps: dict, labels: list[dict], dropped: Counter):
    """The SFT examples of the action labels that pass the filters, in (episode, step) order, and the
    collected frame of each image path; what is left out is counted in ``dropped`` by reason."""
    from vlmppo.envs import adapter_from_config

    pc = cfg.preprocess
    adapter = adapter_from_config(cfg.env)
    action_labels = {(r["episode"], r["step"]): r for r in labels if r.get("mode") == "action"}
    scores = {(r["episode"], r["step"]): r.get("score") for r in labels if r.get("mode") == "score"}
    solved = _episode_solved(steps.values(), adapter)
    kept: list[dict] = []
    sources: dict[str, Path] = {}  # image path in data/ -> the collected frame
    seen: set = set()
    for key, lab in sorted(action_labels.items()):
        step = steps.get(key)
        reason = _filtered_out(pc, step, lab, solved, scores.get(key), key)
        if reason:
            dropped[reason] += 1
            continue
        frame = root / "collect" / step["frame"]
        if not frame.is_file():
            if pc.on_error == "stop":
                raise DataError(
                    f"Frame {frame} (episode {key[0]}, step {key[1]}) is missing.",
                    hint="Collect again, or pass preprocess.on_error=skip to drop such steps.",
                )
            dropped["frame missing"] += 1
            continue
        thoughts = None if pc.action_only else lab.get("thoughts")
        # The answer in the format the prompt asks for (rl4vlm: the state's fields, from the step's state).
        answer = adapter.format_answer(lab["action_index"], thoughts, step["state"])
        prompt = (
            adapter.prompt(step["state"], action_only=pc.action_only) if pc.action_only else step["prompt"]
        )
        history = _earlier_turns(cfg, root, key, steps, action_labels, adapter)
        if pc.dedupe:
            identity = (_frame_digest(frame), answer, tuple(past for _, past, _ in history))
            if identity in seen:
                dropped["duplicate (frame, answer)"] += 1
                continue
            seen.add(identity)
        image = _data_image(step)
        turns = [(past_image, past_answer) for past_image, past_answer, _ in history]
        kept.append(
            sft_example(prompt, answer, image, turns, episode=key[0], step=key[1], action=lab["action"])
        )
        sources[image] = frame
        sources.update((past_image, source) for past_image, _, source in history)
    return kept, sources


def _data_image(step: dict) -> str:
    """The image path under data/ of a collected step's frame (frames/<episode>/<step>.png)."""
    return "images/" + "/".join(Path(step["frame"]).parts[-2:])


def _earlier_turns(cfg: Config, root: Path, key, steps: dict, action_labels: dict, adapter):
    """The ``env.history`` steps before ``key`` in its episode, oldest first, as (image path under data/,
    answer, collected frame): the label's answer in the prompt's format where the step has one, else the
    collected action. Stops at the first earlier step not collected or without its frame."""
    episode, step_index = key
    turns = []
    for earlier in range(step_index - 1, max(-1, step_index - 1 - cfg.env.history), -1):
        step = steps.get((episode, earlier))
        frame = root / "collect" / step["frame"] if step is not None else None
        if frame is None or not frame.is_file():
            break
        lab = action_labels.get((episode, earlier))
        if lab is not None and lab.get("action_index") is not None:
            thoughts = None if cfg.preprocess.action_only else lab.get("thoughts")
            answer = adapter.format_answer(lab["action_index"], thoughts, step["state"])
        else:
            answer = adapter.format_answer(step["action"], None, step["state"])
        turns.append((_data_image(step), answer, frame))
    return turns[::-1]


def _filtered_out(pc, step: dict | None, lab: dict, solved: dict[int, bool], score, key) -> str | None:
    """Why the labelled step ``key`` is left out by the config's filters, or None when it is kept."""
    if step is None:
        return "no collected step"
    if lab.get("status") != "ok" and (pc.drop_parse_errors or lab.get("action_index") is None):
        return lab.get("status", "unknown status")
    if pc.only_success and not solved[key[0]]:
        return "episode not successful"
    if pc.min_score is not None and (score is None or score < pc.min_score):
        return f"score below {pc.min_score:g} or unscored"
    return None


def _write_dataset(data_dir: Path, train: list[dict], val: list[dict], sources: dict[str, Path], fmt: str):
    """The images, train.jsonl and val.jsonl (and LLaMA-Factory's files, or their removal) into ``data_dir``."""
    from vlmppo.data.llamafactory import remove_llamafactory, write_llamafactory

    link_images(data_dir, {image: sources[image] for r in train + val for image in r["images"]})
    atomic_write_text(
        data_dir / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in train)
    )
    atomic_write_text(data_dir / "val.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in val))
    if fmt == "llamafactory":
        write_llamafactory(data_dir, train, val)
    else:
        remove_llamafactory(data_dir)


def link_images(data_dir: Path, images: dict[str, Path]) -> None:
    """Fill ``data_dir/images/`` with exactly ``images`` (path under data/ -> source frame): hard links
    (no extra disk), copies where the file system cannot link. Built beside, then swapped in whole, so
    the folder never mixes two preprocess runs."""
    tmp = data_dir / f".images.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for relative, source in images.items():
        target = tmp / Path(relative).relative_to("images")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(source, target)
    tmp.mkdir(parents=True, exist_ok=True)
    atomic_replace_dir(tmp, data_dir / "images")


def _episode_solved(steps, adapter) -> dict[int, bool]:
    by_episode: dict[int, list[dict]] = {}
    for row in steps:
        by_episode.setdefault(row["episode"], []).append(row)
    result = {}
    for episode, rows in by_episode.items():
        rows.sort(key=lambda r: r["step"])
        last = rows[-1]
        result[episode] = bool(
            adapter.is_solved(sum(r["reward"] for r in rows), last.get("final_state", last["state"]))
        )
    return result


def _frame_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha1(path.read_bytes()).hexdigest()


def _balance(rows: list[dict], rng: np.random.Generator, dropped: Counter) -> list[dict]:
    """Subsample every action down to the count of the rarest one."""
    by_action: dict[str, list[dict]] = {}
    for row in rows:
        by_action.setdefault(row["action"], []).append(row)
    floor = min(len(v) for v in by_action.values())
    kept = []
    for group in by_action.values():
        pick = sorted(rng.choice(len(group), size=floor, replace=False))
        kept.extend(group[i] for i in pick)
        dropped["balancing actions"] += len(group) - floor
    return sorted(kept, key=lambda r: (r["episode"], r["step"]))


def _split_by_episode(rows: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    episodes = sorted({r["episode"] for r in rows})
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_val = int(round(val_fraction * len(episodes)))
    if val_fraction > 0 and len(episodes) > 1:
        n_val = min(max(n_val, 1), len(episodes) - 1)
    val_episodes = {episodes[i] for i in order[:n_val]}
    return [r for r in rows if r["episode"] not in val_episodes], [
        r for r in rows if r["episode"] in val_episodes
    ]
