"""Where a rollout's time goes (issue 18): the value pass after the last step bootstraps every truncated
episode too, the merged sampling copy is refreshed after the update (not inside the next rollout), and the
logged rates say which seconds they count."""

from __future__ import annotations

import pytest
import torch

from vlmppo.config import load_config
from vlmppo.envs import make_vec_env
from vlmppo.rl import rollout
from vlmppo.rl.startup import build_policy

SMALL = [
    "ppo.max_new_tokens=6",
    "ppo.minibatch_size=4",
    "ppo.micro_batch_size=2",
    "ppo.n_epochs=1",
    "ppo.save_every=100",
]


def record_truncations(monkeypatch, vec) -> dict:
    """From now on, ``(step, env) -> (final observation, final info)`` of each episode ``vec``'s time limit
    cuts (terminated ones are not bootstrapped), filled as ``vec`` steps."""
    finals, step, steps = {}, vec.step, [0]

    def recording_step(actions):
        out = step(actions)
        for env, info in enumerate(out[4]):
            if out[3][env] and not out[2][env]:
                finals[(steps[0], env)] = (info["final_obs"], info["final_info"])
        steps[0] += 1
        return out

    monkeypatch.setattr(vec, "step", recording_step)
    return finals


def test_truncated_episodes_are_bootstrapped_in_the_value_pass_after_the_last_step(tmp_path, monkeypatch):
    # NumberLine with a 2-step time limit: over 5 steps episodes are truncated in several different steps.
    # Each bootstrap value must be V(that final observation) as a pass of its own computes it, and all of
    # them come from one pass of at most n_envs observations per chunk, not one pass per step.
    cfg = load_config(
        "numberline-tiny",
        overrides=[*SMALL, f"run.output_dir={tmp_path}", "env.n_envs=3", "ppo.n_steps=5"],
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env(cfg.env.id, 3, seed=0, max_episode_steps=2)
    finals = record_truncations(monkeypatch, vec)
    calls: list[int] = []
    values = rollout.state_values

    def counted(policy, images, *args, **kwargs):
        calls.append(len(images))
        return values(policy, images, *args, **kwargs)

    monkeypatch.setattr(rollout, "state_values", counted)
    buffer, obs, infos = rollout.collect_rollout(policy, vec, *vec.reset(), cfg)
    assert len({t for t, _ in finals}) >= 2, "the test needs truncations in two steps at least"
    total = len(finals) + 3  # chunks of n_envs observations, all after the last step
    assert calls == [3] * (total // 3) + ([total % 3] if total % 3 else [])
    monkeypatch.setattr(rollout, "state_values", values)
    for (t, env), (frame, info) in finals.items():
        alone = rollout.state_values(policy, [frame], [info], vec.adapter)
        torch.testing.assert_close(buffer.bootstrap_values[t, env], alone[0], atol=1e-5, rtol=0)
    untruncated = torch.ones_like(buffer.truncated)
    for t, env in finals:
        untruncated[t, env] = False
    assert (buffer.bootstrap_values[untruncated] == 0).all()
    torch.testing.assert_close(buffer.last_value, rollout.state_values(policy, obs, infos, vec.adapter))
    assert buffer.timing.values_s > 0 and buffer.timing.capture_steps == 0


def test_state_values_equal_the_plain_prompt_only_forwards_on_a_left_padded_batch():
    # The bootstrap (ActorCritic.prompt_values) goes through the shared prompt embeddings (the M-RoPE index
    # computed once per distinct row on the host); it must be the V(s) the plain prompt-only forward reads.
    from vlmppo.models.inputs import build_inputs, to_pil
    from vlmppo.rl.rollout import prompts_for

    cfg = load_config("numberline-tiny", overrides=["env.n_envs=2"])
    assert cfg.model.family.startswith("qwen")  # the M-RoPE path
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env(cfg.env.id, 2, seed=0)
    obs, infos = vec.reset()
    # One prompt shows an earlier turn, so the other is left-padded.
    windows = [(), rollout.HistoryWindows(1, 1).advance([obs[0]], ["earlier answer"], [False])[0]]
    batch = build_inputs(
        policy.loaded, [to_pil(o) for o in obs], prompts_for(vec.adapter, infos), histories=windows
    )
    assert (batch["attention_mask"] == 0).any()  # one row is left-padded
    with torch.no_grad():
        expected = policy.values(policy.backbone(**batch).last_hidden_state[:, -1])
    got = rollout.state_values(policy, obs, infos, vec.adapter, windows)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_steady_rate_leaves_out_the_steps_that_captured_graphs():
    from vlmppo.rl.buffer import RolloutBuffer
    from vlmppo.rl.ppo import rollout_time_metrics

    buffer = RolloutBuffer(n_steps=4, n_envs=32, max_answer_tokens=8)
    buffer.seconds = 10.0
    buffer.timing.capture_steps, buffer.timing.capture_s, buffer.timing.values_s = 1, 4.0, 0.5
    m = rollout_time_metrics(buffer)
    assert m["time/env_steps_per_s"] == pytest.approx(128 / 10.0)
    assert m["time/steady_env_steps_per_s"] == pytest.approx(96 / 6.0)  # 3 steps of 32 in 10 - 4 seconds
    assert m["time/capture_s"] == 4.0 and m["time/values_s"] == 0.5
    buffer.timing.capture_steps, buffer.timing.capture_s = 4, 9.5
    assert rollout_time_metrics(buffer)["time/steady_env_steps_per_s"] is None


def test_a_new_graph_in_the_static_decoder_counts_as_a_capture_once():
    # On the CPU the static decoder captures nothing; a graph it adds (as on a GPU) is seen once.
    cfg = load_config("numberline-tiny", overrides=["model.decoder=static"])
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    watch = rollout.CaptureWatch(policy)
    assert not watch.captured()
    from vlmppo.models.generation import static_decoder_for

    decoder = static_decoder_for(policy.loaded.model)
    decoder.graphs[("spec", 4)] = object()
    assert watch.captured() and not watch.captured()
    del decoder.graphs[("spec", 4)]
    plain = build_policy(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"decoder": "generate"})}), "cpu"
    )
    assert rollout.CaptureWatch(plain).decoders == []


def test_the_loop_refreshes_the_merged_copy_after_the_update_and_logs_each_phase(tmp_path, monkeypatch):
    from vlmppo.rl import startup, train_ppo

    cfg = load_config(
        "numberline-tiny",
        overrides=[
            *SMALL,
            f"run.output_dir={tmp_path}",
            "env.n_envs=2",
            "ppo.n_steps=2",
            "ppo.total_env_steps=4",
            "ppo.merged_sampling=true",
        ],
    )
    built = {}
    original = startup.build_policy

    def keep(*args, **kwargs):
        built["policy"] = original(*args, **kwargs)
        return built["policy"]

    monkeypatch.setattr(startup, "build_policy", keep)
    m = train_ppo(cfg).last_metrics
    sampler = built["policy"].sampler
    assert sampler is not None and not sampler.stale  # refreshed at the end of the update, not lazily
    merged = dict(sampler.model.named_parameters())
    trained = built["policy"].loaded.model
    lora = next(
        mod for name, mod in trained.named_modules() if name.endswith("q_proj") and hasattr(mod, "lora_A")
    )
    name = next(n for n, mod in trained.named_modules() if mod is lora).removeprefix("base_model.model.")
    expected = lora.get_base_layer().weight.float() + lora.get_delta_weight("default").float()
    torch.testing.assert_close(
        merged[f"{name}.weight"].float(), expected.to(merged[f"{name}.weight"].dtype).float()
    )
    assert m["time/refresh_s"] > 0 and m["time/update_s"] > 0 and m["time/values_s"] > 0
    assert m["time/capture_steps"] == 0 and m["time/steady_env_steps_per_s"] == pytest.approx(
        m["time/env_steps_per_s"]
    )
    assert "sys/gpu_mem_peak_rollout_gb" not in m  # CPU: no GPU memory to report


def test_with_history_each_bootstrap_sees_the_turns_of_its_own_episode(tmp_path, monkeypatch):
    # env.history=1: the final observation's prompt shows the last turn of the episode that just ended (not
    # the emptied window of the one that starts), as a pass of its own over that observation computes it.
    from vlmppo.models.inputs import Turn

    cfg = load_config(
        "numberline-tiny",
        overrides=[*SMALL, f"run.output_dir={tmp_path}", "env.n_envs=2", "ppo.n_steps=3", "env.history=1"],
    )
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    vec = make_vec_env(cfg.env.id, 2, seed=0, max_episode_steps=2)
    finals = record_truncations(monkeypatch, vec)
    buffer, _, _ = rollout.collect_rollout(policy, vec, *vec.reset(), cfg, rollout.HistoryWindows(2, 1))
    assert finals
    for (t, env), (frame, info) in finals.items():
        flat = t * 2 + env
        last_turn = (Turn(buffer.images[flat], buffer.texts[flat]),)
        alone = rollout.state_values(policy, [frame], [info], vec.adapter, [last_turn])
        torch.testing.assert_close(buffer.bootstrap_values[t, env], alone[0], atol=1e-5, rtol=0)
        without = rollout.state_values(policy, [frame], [info], vec.adapter, [()])
        assert not torch.allclose(alone, without, atol=1e-5)  # the history is in the prompt
