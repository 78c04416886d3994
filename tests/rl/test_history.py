"""Multi-turn history (``env.history: K``): per-env windows that follow the vector env's episodes, rollouts
whose update re-scores exactly the prompt that was sampled, the last answer alone scored, and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmppo.config import load_config
from vlmppo.envs import make_vec_env
from vlmppo.rl.history import HistoryWindows

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "llava", "llava-next"]


def test_windows_keep_the_last_k_turns_of_each_env_and_empty_when_its_episode_ends():
    # A real vector env with a short time limit, so episodes end (and auto-reset) inside the run.
    vec = make_vec_env("gym_cards/NumberLine-v0", 3, seed=0, max_episode_steps=3)
    obs, _ = vec.reset()
    windows = HistoryWindows(vec.n_envs, 2)
    episode_frames: list[list[np.ndarray]] = [[] for _ in range(vec.n_envs)]
    ends = 0
    rng = np.random.default_rng(0)
    for step in range(10):
        histories = windows.histories()
        for env in range(vec.n_envs):  # what the prompt shows: the episode's last <= 2 frames before this one
            expected = episode_frames[env][-2:]
            assert len(histories[env]) == len(expected)
            assert all(t.frame is f for t, f in zip(histories[env], expected, strict=True))
        answers = [f"answer {step} {env}" for env in range(vec.n_envs)]
        actions = [int(a) for a in rng.integers(0, vec.n_actions, vec.n_envs)]
        next_obs, _, terminated, truncated, infos = vec.step(actions)
        done = terminated | truncated
        after = windows.advance(obs, answers, done)
        for env in range(vec.n_envs):
            episode_frames[env].append(obs[env])
            last = after[env][-1]  # the history of the next (or final) observation ends with this turn
            assert last.frame is obs[env] and last.answer == answers[env]
            if done[env]:
                ends += 1
                assert "final_obs" in infos[env] and windows.histories()[env] == ()
                episode_frames[env] = []
        obs = next_obs
    assert ends >= 3


def test_window_state_round_trips_and_a_smaller_k_keeps_the_newest_turns():
    windows = HistoryWindows(2, 3)
    frames = [np.full((4, 4, 3), i, dtype=np.uint8) for i in range(4)]
    for i, frame in enumerate(frames):
        windows.advance([frame, frame], [f"a{i}", f"b{i}"], [False, i == 1])
    restored = HistoryWindows.from_state(windows.state(), 3)
    assert [[t.answer for t in h] for h in restored.histories()] == [["a1", "a2", "a3"], ["b2", "b3"]]
    assert all(
        np.array_equal(a.frame, b.frame) for a, b in zip(restored.windows[0], windows.windows[0], strict=True)
    )
    smaller = HistoryWindows.from_state(windows.state(), 1)
    assert [[t.answer for t in h] for h in smaller.histories()] == [["a3"], ["b3"]]
    assert HistoryWindows(2, 0).advance(frames[:2], ["x", "y"], [False, False]) == [(), ()]


@pytest.mark.parametrize("family", FAMILIES)
def test_update_rescoring_with_history_equals_the_rollout_and_scores_the_last_answer_only(family, tmp_path):
    from vlmppo.rl.buffer import RolloutBuffer
    from vlmppo.rl.logprob import mixed_action_logprob
    from vlmppo.rl.rollout import rollout_step
    from vlmppo.rl.startup import build_policy
    from vlmppo.rl.update import collate

    cfg = load_config(
        "numberline-tiny",
        overrides=[f"model.family={family}", f"model.path=tiny:{family}", f"run.output_dir={tmp_path}",
                   "env.n_envs=3", "env.history=2", "ppo.n_steps=3", "ppo.max_new_tokens=10",
                   "ppo.minibatch_size=9", "ppo.micro_batch_size=9"],
    )  # fmt: skip
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env("gym_cards/NumberLine-v0", 3, seed=0)
    obs, infos = vec.reset()
    windows = HistoryWindows(3, 2)
    buffer = RolloutBuffer(3, 3, 10)
    for _ in range(3):
        step = rollout_step(policy, vec, obs, infos, cfg, windows.histories())
        buffer.add(step, torch.zeros(3), torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool),
                   torch.zeros(3))  # fmt: skip
        windows.advance(step.images, step.texts, [False] * 3)
        obs, _, _, _, infos = vec.step(step.actions)
    assert [len(h) for h in buffer.histories] == [0] * 3 + [1] * 3 + [2] * 3
    # The update's batch mixes steps with 0, 1 and 2 earlier turns; it rebuilds their prompts from the turns.
    samples = buffer.samples([8, 0, 4, 7])
    sampled, masks = collate(policy, samples)
    image_tokens = int((sampled.sequences == image_token_id(policy)).sum())
    assert image_tokens == per_image_tokens(policy, samples.images[0]) * (3 + 1 + 2 + 3)  # K + 1 per row
    with torch.no_grad():
        token_logp, values = policy.score(sampled, temperature=cfg.ppo.temperature)
    new_logp = mixed_action_logprob(token_logp, masks["thought"], masks["action"], cfg.ppo.thought_coef,
                                    masks["key"], cfg.ppo.action_key_coef)  # fmt: skip
    torch.testing.assert_close(new_logp, samples.old_logp, atol=2e-4, rtol=0)
    torch.testing.assert_close(values, samples.old_values, atol=1e-4, rtol=0)
    # Only the last answer is scored: the answer mask covers this step's sampled tokens, no earlier turn's.
    assert torch.equal(sampled.answer_mask.sum(1), buffer.answer_lengths.reshape(-1)[[8, 0, 4, 7]])
    assert (token_logp[~sampled.answer_mask] == 0).all()
    # The value token is the prompt's last one: the generation prompt after the current frame and the task.
    opener = policy.loaded.tokenizer(generation_opener(policy), add_special_tokens=False)["input_ids"]
    assert (
        sampled.sequences[:, sampled.prompt_len - len(opener) : sampled.prompt_len].tolist() == [opener] * 4
    )


def image_token_id(policy) -> int:
    config = policy.loaded.model.config
    return getattr(config, "image_token_id", None) or config.image_token_index


def per_image_tokens(policy, frame) -> int:
    from vlmppo.models.inputs import build_inputs, to_pil

    batch = build_inputs(policy.loaded, [to_pil(frame)], ["x"])
    return int((batch["input_ids"] == image_token_id(policy)).sum())


def generation_opener(policy) -> str:
    """The text the template puts after the last user turn (the assistant's opener)."""
    from vlmppo.models.inputs import chat_prompt

    with_opener = chat_prompt(policy.loaded, "TASK", add_generation_prompt=True)
    return with_opener[with_opener.rindex("TASK") + len("TASK") :].lstrip()


PPO_SMALL = [
    "env.history=2",
    "env.n_envs=2",
    "ppo.n_steps=4",
    "ppo.minibatch_size=8",
    "ppo.micro_batch_size=4",
    "ppo.n_epochs=1",
    "ppo.max_new_tokens=8",
    "ppo.save_every=100",
    "ppo.total_env_steps=8",
]


@pytest.mark.e2e  # 8 short PPO runs
@pytest.mark.parametrize("preset", ["minigrid-doorkey-tiny", "numberline-tiny"])
@pytest.mark.parametrize("family", FAMILIES)
def test_ppo_with_two_turns_of_history_runs_on_every_family(preset, family, tmp_path):
    from vlmppo.rl import ppo, train_ppo

    cfg = load_config(
        preset,
        overrides=[*PPO_SMALL, f"model.family={family}", f"model.path=tiny:{family}",
                   f"run.output_dir={tmp_path}", "env.max_episode_steps=3"],
    )  # fmt: skip
    buffers = []
    original = ppo.collect_rollout

    def spy(*args, **kwargs):
        buffer, obs, infos = original(*args, **kwargs)
        buffers.append(buffer)
        return buffer, obs, infos

    ppo.collect_rollout = spy
    try:
        result = train_ppo(cfg)
    finally:
        ppo.collect_rollout = original
    assert result.updates == 1 and result.env_steps == 8
    (buffer,) = buffers
    lengths = [len(h) for h in buffer.histories]
    assert lengths[:2] == [0, 0] and max(lengths) == 2
    # Where an episode ended (time limit 3), the env's next prompt starts without earlier turns.
    done = (buffer.terminated | buffer.truncated).reshape(-1)
    for flat in np.flatnonzero(done.numpy()):
        if flat + buffer.n_envs < buffer.size:
            assert lengths[flat + buffer.n_envs] == 0
    row = json.loads((result.out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(row["train/policy_loss"]) and np.isfinite(row["train/value_loss"])


@pytest.mark.e2e  # three short PPO runs
def test_ppo_with_history_resumes_exactly(tmp_path):
    import os
    import signal

    from safetensors.torch import load_file

    from vlmppo.rl import train_ppo

    small = [*PPO_SMALL, "env.max_episode_steps=5", "ppo.total_env_steps=12", "ppo.n_steps=2",
             "ppo.minibatch_size=4", "ppo.micro_batch_size=2"]  # fmt: skip

    def stop_after_first(update, total, metrics):
        if update == 1:
            os.kill(os.getpid(), signal.SIGUSR1)

    straight = load_config("numberline-tiny", overrides=[*small, f"run.output_dir={tmp_path / 'a'}"])
    train_ppo(straight)
    split = load_config("numberline-tiny", overrides=[*small, f"run.output_dir={tmp_path / 'b'}"])
    assert train_ppo(split, on_update=stop_after_first).stopped_by == "SIGUSR1"
    state = torch.load(
        tmp_path / "b/numberline-tiny/ppo/checkpoints/000001/trainer_state.pt", weights_only=False
    )
    assert max(len(window) for window in state["history"]) == 2  # mid-episode windows were saved
    train_ppo(split, resume="auto")
    rows = [
        [json.loads(line) for line in (tmp_path / run / "numberline-tiny/ppo/metrics.jsonl").open()]
        for run in ("a", "b")
    ]
    for a, b in zip(*rows, strict=True):
        for key in ("train/policy_loss", "train/value_loss", "rollout/reward_mean", "rollout/value_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["update"], key)
    weights = [load_file(str(tmp_path / run / "numberline-tiny/ppo/checkpoints/last/adapter_model.safetensors"))
               for run in ("a", "b")]  # fmt: skip
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_ppo_with_history_trains_for_several_updates_and_its_checkpoint_evaluates_with_history(
    family, tmp_path
):
    from tests.helpers import run_cli

    common = ["--preset", "minigrid-doorkey-tiny", f"run.output_dir={tmp_path}", "env.history=2",
              f"model.family={family}", f"model.path=tiny:{family}"]  # fmt: skip
    trained = run_cli("ppo", *common, "ppo.total_env_steps=48", "ppo.n_steps=4", "ppo.minibatch_size=8",
                      "ppo.micro_batch_size=8", "ppo.max_new_tokens=12", "ppo.n_epochs=2",
                      "ppo.save_every=2")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "minigrid-doorkey-tiny"
    rows = [json.loads(line) for line in (run / "ppo/metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2, 3]
    assert all(np.isfinite(row["train/policy_loss"]) for row in rows)
    evaluated = run_cli("eval", *common, "--episodes", "2", "eval.max_new_tokens=12")
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads((run / "eval/ppo-000003/metrics.json").read_text())
    assert metrics["episodes"] == 2 and metrics["value_head"] is True
