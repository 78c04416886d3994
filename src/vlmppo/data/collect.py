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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from vlmppo.envs.episodes import Episode, Outcome

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


@dataclass
class _Tally:
    """Finished episodes (kept from an interrupted run, then new ones) and what they add up to."""

    done: dict[int, list[dict]]
    steps: int = 0
    successes: int = 0
    solved: int = 0

    def add(self, episode: int, rows: list[dict], total: float, final_state: dict, adapter) -> None:
        from vlmppo.envs import is_success

        self.done[episode] = rows
        self.steps += len(rows)
        self.successes += is_success(total)
        self.solved += bool(adapter.is_solved(total, final_state))


@locked("collect")
def collect(cfg: Config, *, on_episode: Callable[[int, int], None] | None = None) -> CollectResult:
    """Collect ``cfg.collect.episodes`` episodes with ``cfg.collect.policy``; resume if interrupted.

    Args:
        on_episode: called with (episodes done, episodes total) after each finished episode.
    """
    from vlmppo.envs import adapter_from_config

    out = run_dir(cfg) / "collect"
    steps_path = out / "episodes.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    repair_jsonl_tail(steps_path)
    kept = _finished_episodes(steps_path) if steps_path.exists() else {}
    if steps_path.exists():
        _rewrite_without(steps_path, set(kept))
    resumed = len(kept)
    adapter = adapter_from_config(cfg.env)
    # Episodes kept from an interrupted run count as the new ones do: judged on the state *after* their
    # last step (``final_state``), not the one before it (``state``).
    tally = _Tally({})
    for episode, rows in kept.items():
        final_state = rows[-1].get("final_state", rows[-1]["state"])
        tally.add(episode, rows, sum(r["reward"] for r in rows), final_state, adapter)
    rng = np.random.default_rng(cfg.run.seed + 7919 * (1 + resumed))
    policy = make_policy(cfg, adapter, rng, cfg.collect.policy)
    todo = [ep for ep in range(cfg.collect.episodes) if ep not in kept]
    with JsonlWriter(steps_path) as writer:
        _play(cfg, adapter, policy, todo, out / "frames", writer, tally, on_episode)

    result = CollectResult(out, len(tally.done), tally.steps, tally.successes, resumed, tally.solved)
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


def _play(cfg: Config, adapter, policy, todo: list[int], frames_dir: Path, writer, tally: _Tally, on_episode):
    """Play the episodes ``todo``, ``env.n_envs`` at a time (one batched ``policy.act`` per step); each is
    written whole when it ends: its frames, then its lines."""
    from vlmppo.envs import make_env_from_config, play_episodes
    from vlmppo.envs.episodes import jsonable
    from vlmppo.rl.history import episode_history

    def decide(running: list[Episode]):
        prompts = [adapter.prompt(e.info) for e in running]
        histories = None
        if cfg.env.history:  # the episode's last K frames with the answers given to them
            histories = [
                episode_history(e.frames, [row["answer"] for row in e.rows], cfg.env.history) for e in running
            ]
        decisions = policy.act(
            [e.env for e in running], [e.obs for e in running], [e.info for e in running], prompts, histories
        )
        return [(adapter.to_env_action(d.index), (p, d)) for p, d in zip(prompts, decisions, strict=True)]

    def record(e: Episode, note, outcome: Outcome) -> dict:
        prompt, decision = note
        step = len(e.rows)
        return {
            "episode": e.key,
            "step": step,
            "seed": cfg.run.seed + e.key,
            "env_id": cfg.env.id,
            "frame": f"frames/{e.key:06d}/{step:03d}.png",
            "next_frame": f"frames/{e.key:06d}/{step + 1:03d}.png",
            "prompt": prompt,
            "state": jsonable(e.info),
            "action": decision.index,
            "action_text": adapter.legal_actions[decision.index],
            "answer": decision.answer,
            "invalid": decision.invalid,
            "reward": outcome.reward,
            "terminated": outcome.terminated,
            "truncated": outcome.truncated,
        }

    def end(e: Episode, outcome: Outcome) -> None:
        e.rows[-1]["final_state"] = jsonable(outcome.info)
        _write_frames(frames_dir, e.key, e.frames)
        writer.write_many(e.rows)
        tally.add(e.key, e.rows, e.total, outcome.info, adapter)
        if on_episode:
            on_episode(len(tally.done), cfg.collect.episodes)

    play_episodes(
        lambda: make_env_from_config(cfg.env),
        cfg.env.n_envs,
        todo,
        reset_seed=lambda episode: cfg.run.seed + episode,
        decide=decide,
        record=record,
        begin=lambda e: setattr(e, "frames", [e.obs]),
        end=end,
    )


def _write_frames(frames_dir: Path, episode: int, frames: list[np.ndarray]) -> None:
    """Write an episode's frames into a temp folder, then move it into place (never half an episode)."""
    final = frames_dir / f"{episode:06d}"
    tmp = frames_dir / f".{episode:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for step, frame in enumerate(frames):
            # Fast compression: half the encode time of the default level, ~1.1-1.5x the bytes; at hundreds
            # of thousands of frames the encoding is most of what collect does.
            Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(tmp / f"{step:03d}.png", compress_level=1)
        atomic_replace_dir(tmp, final)
    except OSError as exc:  # a full disk: PIL's error names no file
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(final, exc) from None
