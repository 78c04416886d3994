"""`vlmppo eval`: run a checkpoint (or the expert / random baseline) for N episodes per seed and write
``runs/<name>/eval/<checkpoint-name | expert | random>/``.

Episodes are independent of batching: episode ``k`` of seed ``s`` is reset with the seed
``reset_seed(s, k)`` and has its own generator (parser fallback, random policy), so a baseline's numbers
do not change with ``env.n_envs``, and every one of the ``episodes x seeds`` episodes runs to its end (no
bias toward short episodes, which a "first N to finish" count would have). A checkpoint answers for all
active envs in one batched ``generate``.

Folder contents: ``metrics.json`` (see ``metrics.summarize``), ``episodes.jsonl`` (one line per step),
``trajectories/episode-NNN.{png,gif}`` for the first ``eval.trajectories`` episodes, ``actions.png``,
``curves-*.png``, ``report.md``, ``report.html``, ``manifest.json``, ``config.yaml`` (the resolved config
of this evaluation: an eval leaves the run's own ``config.yaml`` alone). The folder is written in a
staging folder of its own beside it and moved into place at the end, so it is either absent, the previous
complete evaluation or the new one, and two evals of one checkpoint at once do not collide.

An existing evaluation is never replaced silently: ``evaluate`` refuses it before playing unless
``overwrite`` (``vlmppo eval --overwrite``; the pipeline's eval stage replaces its own), and if another
eval put one there while this one played, this one goes beside it as ``<name>-2``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlmppo.config import Config, config_to_yaml, run_dir
from vlmppo.errors import ConfigError, ResultExistsError
from vlmppo.eval.metrics import BASELINES
from vlmppo.io import atomic_replace_dir, atomic_write_json, atomic_write_text, storage_error, write_manifest
from vlmppo.models.inputs import Turn

if TYPE_CHECKING:
    from vlmppo.envs.episodes import Episode, Outcome


def reset_seed(seed: int, k: int) -> int:
    """The env reset seed of episode ``k`` of eval seed ``seed`` (distinct across seeds and episodes,
    and unrelated to the ``run.seed + k`` seeds that collect and PPO train on)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


@dataclass
class EvalResult:
    out_dir: Path
    name: str
    metrics: dict
    report: Path


def checkpoint_name(run_root: Path, path: Path) -> str:
    """``ppo-000012`` for ``runs/<name>/ppo/checkpoints/000012``; otherwise the folder's own name."""
    path = Path(path).resolve()
    try:
        parts = path.relative_to(Path(run_root).resolve()).parts
    except ValueError:
        parts = ()
    if len(parts) == 3 and parts[1] == "checkpoints":
        return f"{parts[0]}-{parts[2]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.name) or "checkpoint"


class _CheckpointActor:
    """A checkpoint's batched generator, plus its value head when the checkpoint has one (PPO)."""

    def __init__(self, cfg: Config, path: Path, device: str):
        import torch

        from vlmppo.checkpoints import load_for_inference
        from vlmppo.models.generation import Generator

        self.cfg, self.device = cfg, device
        self.loaded = load_for_inference(cfg, str(path), device=device)
        self.generator = Generator(self.loaded, device, cfg.eval.generation, cfg.model.decoder)
        self.critic = None
        head_file = path / "value_head.safetensors"
        if head_file.is_file():
            from safetensors.torch import load_file

            from vlmppo.rl.policy import ActorCritic, ValueHead, hidden_size

            head = ValueHead(hidden_size(self.loaded.model))
            head.load_state_dict(load_file(str(head_file)))
            head.eval()
            self.critic = ActorCritic(self.loaded, head, device)
        e = cfg.eval
        self.temperature = 0.0 if e.greedy else e.temperature
        torch.manual_seed(e.seeds[0])

    def decoding(self) -> str:
        """What the answers were decoded with, for metrics.json and the report: ``greedy``, ``sampled at
        temperature T``, or ``checkpoint generation_config (do_sample=True, top_k=20, ...)``."""
        from vlmppo.models.generation import describe_generation

        config = self.generator.generation_config(
            temperature=self.temperature, max_new_tokens=self.cfg.eval.max_new_tokens
        )
        if self.generator.generation == "checkpoint":
            return f"checkpoint generation_config ({describe_generation(config)})"
        return describe_generation(config)

    def answer(self, observations, prompts, histories=None) -> tuple[list[str], list[int]]:
        """One batched generate: the answer texts and the tokens each took (end-of-turn included).
        ``histories``: each episode's earlier turns (``env.history``)."""
        texts, ids = self.generator.generate_answers(
            observations,
            prompts,
            temperature=self.temperature,
            max_new_tokens=self.cfg.eval.max_new_tokens,
            histories=histories,
        )
        return texts, [len(answer) for answer in ids]

    def values(self, observations, infos, adapter, histories=None) -> list[float | None]:
        if self.critic is None:
            return [None] * len(observations)
        from vlmppo.rl.rollout import state_values

        return [float(v) for v in state_values(self.critic, observations, infos, adapter, histories)]


def check_adapter_family(path: Path, family: str) -> None:
    """A plain PEFT adapter folder (no ``vlmppo.json``, so ``check_family`` cannot tell): ModelError when the
    base model its ``adapter_config.json`` names is a local model of another family."""
    from vlmppo.checkpoints import META

    adapter_config = path / "adapter_config.json"
    if (path / META).is_file() or not adapter_config.is_file():
        return
    base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if base and (Path(base) / "config.json").is_file():
        from vlmppo.models.loading import detect_family

        detect_family(base, family)


def _check(cfg: Config, policy: str | None) -> None:
    if policy is not None and policy not in BASELINES:
        raise ConfigError(
            f"--policy {policy!r} is not a baseline.", hint="Use --policy expert or --policy random."
        )
    if cfg.eval.episodes < 1 or not cfg.eval.seeds:
        raise ConfigError("Nothing to evaluate: eval.episodes must be at least 1 and eval.seeds not empty.")


@dataclass
class _Played:
    """What the episode loop returns: per-episode and per-step records, captured frames, wall time."""

    episodes: list[dict]
    steps: list[dict]
    captured: dict[int, tuple[list, list, dict]]
    wall_s: float


def play(cfg: Config, adapter, actor, policy: str | None, on_episode) -> _Played:
    """Play every (seed, k) episode to its end, ``env.n_envs`` at a time, one batched generate per step.

    ``actor``: None for a baseline (``policy``), else what answers: a checkpoint's (``_CheckpointActor``) or
    the live policy of a PPO run (``eval.live``), with ``answer`` and ``values`` as the checkpoint's."""
    from vlmppo.data.policies import ExpertPolicy, RandomPolicy
    from vlmppo.envs import is_success, make_env_from_config, play_episodes
    from vlmppo.envs.episodes import jsonable

    e = cfg.eval
    queue = [
        (index, seed, k) for index, (seed, k) in enumerate((s, k) for s in e.seeds for k in range(e.episodes))
    ]
    played = _Played([], [], {}, 0.0)
    windows: dict = {}  # episode key -> its last env.history turns (frame, answer)

    def begin(episode: Episode) -> None:
        windows[episode.key] = deque(maxlen=cfg.env.history)
        index, seed, k = episode.key
        rng = np.random.default_rng([seed, k, 2])  # parser fallback, random policy: per episode
        baseline = {"expert": ExpertPolicy, "random": RandomPolicy}.get(policy)
        episode.context = (rng, baseline(adapter, rng) if baseline else None)
        episode.frames = [episode.obs] if index < e.trajectories else None

    def decide(running: list[Episode]):
        prompts = [adapter.prompt(x.info) for x in running]
        observations = [x.obs for x in running]
        if actor is not None:
            histories = [tuple(windows[x.key]) for x in running] if cfg.env.history else None
            answers, token_counts = actor.answer(observations, prompts, histories)
            values = actor.values(observations, [x.info for x in running], adapter, histories)
            for episode, answer in zip(running, answers, strict=True):
                windows[episode.key].append(Turn(episode.obs, answer))
        else:
            answers = token_counts = values = [None] * len(running)
        moves = []
        for episode, prompt, answer, tokens, value in zip(
            running, prompts, answers, token_counts, values, strict=True
        ):
            index, invalid, thoughts = _choose(episode, prompt, answer, actor, policy, adapter)
            moves.append((adapter.to_env_action(index), (answer, thoughts, index, invalid, value, tokens)))
        return moves

    def end(episode: Episode, outcome: Outcome) -> None:
        windows.pop(episode.key)
        index, seed, _ = episode.key
        success, solved = is_success(episode.total), bool(adapter.is_solved(episode.total, outcome.info))
        episode.rows[-1].update({"episode_return": episode.total, "success": success, "solved": solved,
                                 "final_state": jsonable(outcome.info)})  # fmt: skip
        summary = {"index": index, "seed": seed, "return": episode.total, "length": len(episode.rows),
                   "success": success, "solved": solved}  # fmt: skip
        played.episodes.append(summary)
        played.steps.extend(episode.rows)
        if episode.frames is not None:
            played.captured[index] = (episode.frames, episode.rows, summary)
        if on_episode:
            on_episode(len(played.episodes), len(queue))

    t0 = time.perf_counter()
    play_episodes(
        lambda: make_env_from_config(cfg.env),
        cfg.env.n_envs,
        queue,
        reset_seed=lambda key: reset_seed(key[1], key[2]),
        decide=decide,
        record=lambda episode, note, outcome: _step_row(episode, note, outcome, adapter),
        begin=begin,
        end=end,
    )
    played.wall_s = time.perf_counter() - t0
    played.steps.sort(key=lambda r: (r["episode"], r["step"]))
    played.episodes.sort(key=lambda r: r["index"])
    return played


def _step_row(episode: Episode, note: tuple, outcome: Outcome, adapter) -> dict:
    """One line of ``episodes.jsonl``: the step of ``episode`` (as it was before it) that ended in ``outcome``."""
    from vlmppo.envs.episodes import jsonable

    answer, thoughts, index, invalid, value, tokens = note
    _, seed, k = episode.key
    return {
        "episode": episode.key[0],
        "seed": seed,
        "episode_in_seed": k,
        "reset_seed": reset_seed(seed, k),
        "step": len(episode.rows),
        "state": jsonable(episode.info),
        "answer": answer,
        "thoughts": thoughts,
        "action": adapter.legal_actions[index],
        "action_index": int(index),
        "invalid": bool(invalid),
        "reward": outcome.reward,
        "value": value,
        "answer_tokens": tokens,
        "terminated": outcome.terminated,
        "truncated": outcome.truncated,
    }


def _choose(episode: Episode, prompt: str, answer: str | None, actor, policy: str | None, adapter):
    """(action index, invalid, thoughts) of one step: the checkpoint's parsed answer, or the baseline's
    action (the expert's reasoning captions the episodes drawn as trajectories)."""
    rng, baseline = episode.context
    if actor is not None:
        parsed = adapter.parse(answer, rng)
        return parsed.index, parsed.invalid, parsed.thoughts
    decision = baseline.act([episode.env], [episode.obs], [episode.info], [prompt])[0]
    thoughts = None
    if episode.frames and policy == "expert":
        thoughts = adapter.expert(episode.env, episode.info).reasoning
    return decision.index, False, thoughts


def _write(folder: Path, cfg: Config, metrics: dict, played: _Played, ckpt_path: Path | None) -> None:
    """metrics.json, episodes.jsonl, trajectories, report and manifest into ``folder``."""
    from vlmppo.eval.captions import write_trajectory
    from vlmppo.eval.report import write_report

    atomic_write_json(folder / "metrics.json", metrics)
    atomic_write_text(folder / "config.yaml", config_to_yaml(cfg))
    lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in played.steps)
    atomic_write_text(folder / "episodes.jsonl", lines)
    trajectories = [
        write_trajectory(folder / "trajectories", f"episode-{index:03d}", *played.captured[index])
        for index in sorted(played.captured)
    ]
    write_report(folder, metrics, run_dir(cfg), trajectories, env=cfg.env.model_dump(mode="json"))
    weights = ("adapter_model.safetensors", "model.safetensors", "value_head.safetensors")
    inputs = {f: ckpt_path / f for f in weights if ckpt_path is not None and (ckpt_path / f).is_file()}
    write_manifest(
        folder,
        stage="eval",
        config=cfg.model_dump(mode="json"),
        inputs=inputs,
        policy=metrics["policy"],
        checkpoint=metrics["checkpoint"],
        generation=metrics["generation"],
        decoding=metrics["decoding"],
        counts={"episodes": len(played.episodes), "steps": len(played.steps)},
    )


def evaluate(
    cfg: Config,
    *,
    policy: str | None = None,
    on_episode: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Evaluate ``cfg.eval.ckpt`` (default ``last``), or the ``expert``/``random`` baseline.

    Args:
        policy: None for the checkpoint, or ``"expert"`` / ``"random"``.
        on_episode: Called with (episodes done, episodes total) after each finished episode.
        overwrite: Replace an existing evaluation of the same name (else ResultExistsError).

    Raises:
        CheckpointError: The checkpoint does not exist, is not a checkpoint, or is of another family.
        ModelError: A plain PEFT adapter whose base model is of another family.
        ConfigError: An unknown baseline, or nothing to evaluate.
        ResultExistsError: ``runs/<name>/eval/<name>`` holds an evaluation and ``overwrite`` is false.
    """
    from vlmppo.envs import adapter_from_config
    from vlmppo.eval.metrics import summarize
    from vlmppo.sysinfo import resolve_device

    _check(cfg, policy)
    e = cfg.eval
    root = run_dir(cfg)
    adapter = adapter_from_config(cfg.env)
    actor, ckpt_path, name = None, None, policy
    if policy is None:
        from vlmppo.checkpoints import check_family, resolve_checkpoint

        ckpt_path = resolve_checkpoint(root, e.ckpt or "last", key="eval.ckpt")
        check_family(ckpt_path, cfg.model.family)
        check_adapter_family(ckpt_path, cfg.model.family)
        suffix = "-checkpoint-generation" if e.generation == "checkpoint" else "" if e.greedy else "-sampled"
        name = checkpoint_name(root, ckpt_path) + suffix
    if not overwrite:
        refuse_existing(root / "eval" / name)
    if ckpt_path is not None:
        actor = _CheckpointActor(cfg, ckpt_path, resolve_device(cfg))
        if cfg.env.history:  # K earlier frames and answers must fit the model's context
            from vlmppo.models.budget import config_prompt_budget

            budget = config_prompt_budget(cfg, e.max_new_tokens, actor.loaded)
            budget.check(cfg.model.path, "eval.max_new_tokens")

    played = play(cfg, adapter, actor, policy, on_episode)
    metrics = {
        "name": name,
        "policy": policy or "checkpoint",
        "checkpoint": str(ckpt_path) if ckpt_path else None,
        "value_head": bool(actor is not None and actor.critic is not None),
        "env_id": cfg.env.id,
        "generation": None if policy else e.generation,
        "decoding": None if policy else actor.decoding(),
        "seeds": list(e.seeds),
        "episodes_per_seed": e.episodes,
        **summarize(played.episodes, played.steps, legal_actions=adapter.legal_actions, wall_s=played.wall_s),
    }
    final = root / "eval" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))  # one per process
    try:
        try:
            _write(tmp, cfg, metrics, played, ckpt_path)
        except OSError as exc:  # frames, GIFs and plots fail with no file name on a full disk
            raise storage_error(final, exc) from None
        final = _move_into_place(tmp, final, overwrite, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return EvalResult(final, final.name, metrics, final / "report.md")


def refuse_existing(folder: Path) -> None:
    """ResultExistsError when ``folder`` holds an evaluation (its ``metrics.json``), saying what it holds."""
    try:
        old = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except ValueError:
        old = {}
    what = f"{old.get('episodes', '?')} episodes, {old.get('decoding') or old.get('policy', '?')}"
    raise ResultExistsError(
        f"{folder} already holds an evaluation ({what}); this one would replace it.",
        hint="Pass --overwrite to replace it, or move that folder away first.",
    )


def _move_into_place(tmp: Path, final: Path, overwrite: bool, root: Path) -> Path:
    """Move the staged folder to ``final`` (replacing it if ``overwrite``; else beside it as ``-2``, ``-3``
    when another eval of the same name finished first); returns where it went."""
    from vlmppo.locks import LOCK_DIR, waiting_lock

    with waiting_lock(root / LOCK_DIR / f"eval-{final.name}.lock"):
        target, n = final, 2
        while not overwrite and target.exists():
            target, n = final.with_name(f"{final.name}-{n}"), n + 1
        atomic_replace_dir(tmp, target)
    return target
