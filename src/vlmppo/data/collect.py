"""`vlmppo collect`: run a policy in the env and record trajectories (JSONL + PNG frames).

Layout of ``runs/<name>/collect/``::

    episodes.jsonl          one line per step (see STEP_KEYS)
    frames/<episode>/<step>.png   the frame before each action, plus the final frame
    manifest.json

Episode ``k`` is reset with seed ``run.seed + k``, so an interrupted run resumes exactly: finished
episodes (all their lines written) are kept and the rest is collected again from their seeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from vlmppo.config import Config, run_dir
from vlmppo.io import (
    JsonlWriter,
    atomic_replace_dir,
    atomic_write_text,
    read_jsonl,
    repair_jsonl_tail,
    storage_error,
    write_manifest,
)
from vlmppo.locks import locked
from vlmppo.sysinfo import resolve_device

STEP_KEYS = (
    "episode",
    "step",
    "seed",
    "env_id",
    "frame",
    "next_frame",
    "prompt",
    "state",
    "action",
    "action_text",
    "answer",
    "invalid",
    "reward",
    "terminated",
    "truncated",
)


def jsonable(value):
    """The JSON-safe part of an env's info: numbers, strings, lists, dicts; numpy turned into Python."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items() if not str(k).startswith("final_")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


@dataclass
class _Slot:
    """One env running one episode; its steps are kept in memory until the episode is written whole."""

    env: object
    episode: int = -1
    obs: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    frames: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    total_reward: float = 0.0


@dataclass
class CollectResult:
    out_dir: Path
    episodes: int
    steps: int
    successes: int
    resumed: int
    solved: int = 0

    @property
    def success_rate(self) -> float:
        """RL4VLM's success rate: episodes with a positive return."""
        return self.successes / max(1, self.episodes)

    @property
    def solved_rate(self) -> float:
        """Episodes that reached the task's own goal."""
        return self.solved / max(1, self.episodes)


def _finished_episodes(path: Path) -> dict[int, list[dict]]:
    """Episodes whose last line is a terminal step: they are complete and kept on resume."""
    by_episode: dict[int, list[dict]] = {}
    for row in read_jsonl(path):
        by_episode.setdefault(row["episode"], []).append(row)
    return {ep: rows for ep, rows in by_episode.items() if rows[-1]["terminated"] or rows[-1]["truncated"]}


def _rewrite_without(path: Path, keep: set[int]) -> None:
    """Drop lines of unfinished episodes (a crash can leave some) before appending new ones."""
    rows = [row for row in read_jsonl(path) if row["episode"] in keep]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def make_policy(cfg: Config, adapter, rng: np.random.Generator, policy: str):
    from vlmppo.data.policies import ExpertPolicy, RandomPolicy, VlmPolicy

    if policy == "expert":
        return ExpertPolicy(adapter, rng, cfg.collect.epsilon)
    if policy == "random":
        return RandomPolicy(adapter, rng)
    from vlmppo.checkpoints import load_policy_for_inference

    generator = load_policy_for_inference(cfg, cfg.collect.ckpt, device=resolve_device(cfg))
    return VlmPolicy(
        generator,
        adapter,
        rng,
        temperature=cfg.collect.temperature,
        max_new_tokens=cfg.collect.max_new_tokens,
    )


@locked("collect")
def collect(cfg: Config, *, on_episode: Callable[[int, int], None] | None = None) -> CollectResult:
    """Collect ``cfg.collect.episodes`` episodes with ``cfg.collect.policy``; resume if interrupted.

    Args:
        on_episode: called with (episodes done, episodes total) after each finished episode.
    """
    from vlmppo.envs import adapter_from_config, is_success, make_env_from_config

    out = run_dir(cfg) / "collect"
    frames_dir = out / "frames"
    steps_path = out / "episodes.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(steps_path)
    done = _finished_episodes(steps_path) if steps_path.exists() else {}
    if steps_path.exists():
        _rewrite_without(steps_path, set(done))
    resumed = len(done)
    todo = [ep for ep in range(cfg.collect.episodes) if ep not in done]

    adapter = adapter_from_config(cfg.env)
    rng = np.random.default_rng(cfg.run.seed + 7919 * (1 + resumed))
    policy = make_policy(cfg, adapter, rng, cfg.collect.policy)

    slots = [_Slot(make_env_from_config(cfg.env)) for _ in range(min(cfg.env.n_envs, max(1, len(todo))))]
    queue = list(todo)
    # Episodes kept from an interrupted run count as the new ones do: judged on the state *after* their
    # last step (``final_state``), not the one before it (``state``).
    successes = sum(is_success(sum(r["reward"] for r in rows)) for rows in done.values())
    solved = sum(
        adapter.is_solved(sum(r["reward"] for r in rows), rows[-1].get("final_state", rows[-1]["state"]))
        for rows in done.values()
    )
    steps = sum(len(rows) for rows in done.values())

    def start(slot: _Slot) -> bool:
        if not queue:
            slot.episode = -1
            return False
        slot.episode = queue.pop(0)
        slot.obs, slot.info = slot.env.reset(seed=cfg.run.seed + slot.episode)
        slot.frames, slot.rows, slot.total_reward = [slot.obs], [], 0.0
        return True

    active = [s for s in slots if start(s)]
    with JsonlWriter(steps_path) as writer:
        while active:
            prompts = [adapter.prompt(s.info) for s in active]
            decisions = policy.act(
                [s.env for s in active], [s.obs for s in active], [s.info for s in active], prompts
            )
            for slot, prompt, decision in zip(active, prompts, decisions, strict=True):
                step = len(slot.rows)
                obs, reward, terminated, truncated, info = slot.env.step(
                    adapter.to_env_action(decision.index)
                )
                slot.rows.append(
                    {
                        "episode": slot.episode,
                        "step": step,
                        "seed": cfg.run.seed + slot.episode,
                        "env_id": cfg.env.id,
                        "frame": f"frames/{slot.episode:06d}/{step:03d}.png",
                        "next_frame": f"frames/{slot.episode:06d}/{step + 1:03d}.png",
                        "prompt": prompt,
                        "state": jsonable(slot.info),
                        "action": decision.index,
                        "action_text": adapter.legal_actions[decision.index],
                        "answer": decision.answer,
                        "invalid": decision.invalid,
                        "reward": float(reward),
                        "terminated": bool(terminated),
                        "truncated": bool(truncated),
                    }
                )
                slot.total_reward += float(reward)
                slot.obs, slot.info = obs, info
                slot.frames.append(obs)
                if terminated or truncated:
                    slot.rows[-1]["final_state"] = jsonable(info)
                    _write_frames(frames_dir, slot.episode, slot.frames)
                    writer.write_many(slot.rows)
                    successes += is_success(slot.total_reward)
                    solved += bool(adapter.is_solved(slot.total_reward, info))
                    steps += len(slot.rows)
                    done[slot.episode] = slot.rows
                    if on_episode:
                        on_episode(len(done), cfg.collect.episodes)
                    start(slot)
            active = [s for s in active if s.episode >= 0]

    result = CollectResult(out, len(done), steps, successes, resumed, solved)
    write_manifest(
        out,
        stage="collect",
        config=cfg.model_dump(mode="json"),
        inputs={},
        policy=cfg.collect.policy,
        ckpt=cfg.collect.ckpt,
        env_id=cfg.env.id,
        seeds={"first": cfg.run.seed, "last": cfg.run.seed + cfg.collect.episodes - 1},
        counts={"episodes": result.episodes, "steps": result.steps, "resumed_episodes": resumed},
        success_rate=result.success_rate,
        solved_rate=result.solved_rate,
    )
    return result


def _write_frames(frames_dir: Path, episode: int, frames: list[np.ndarray]) -> None:
    """Write an episode's frames into a temp folder, then move it into place (never half an episode)."""
    final = frames_dir / f"{episode:06d}"
    tmp = frames_dir / f".{episode:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for step, frame in enumerate(frames):
            Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(tmp / f"{step:03d}.png")
        atomic_replace_dir(tmp, final)
    except OSError as exc:  # a full disk: PIL's error names no file
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(final, exc) from None
