"""The PPO loop end to end on tiny models: parameters move, metrics and checkpoints are written."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers import run_cli

from vlmppo.config import load_config


def test_one_update_changes_every_lora_parameter_and_the_value_head_and_no_frozen_one(tmp_path):
    from vlmppo.rl import startup, train_ppo

    cfg = load_config(
        "probe-color-tiny",
        overrides=[
            f"run.output_dir={tmp_path}",
            "env.n_envs=4",
            "ppo.n_steps=2",
            "ppo.total_env_steps=8",
            "ppo.minibatch_size=8",
            "ppo.micro_batch_size=4",
            "ppo.n_epochs=2",
            "ppo.max_new_tokens=6",
            "ppo.lr=1e-2",
            "ppo.min_lr=1e-2",
            "ppo.clip_range=1000",
            "ppo.clip_range_vf=null",
        ],
    )
    captured = {}
    original = startup.build_policy

    def spy(*args, **kwargs):
        policy = original(*args, **kwargs)
        captured["policy"] = policy
        captured["before"] = {n: q.detach().clone() for n, q in policy.loaded.model.named_parameters()}
        captured["head"] = {n: q.detach().clone() for n, q in policy.value_head.named_parameters()}
        return policy

    startup.build_policy = spy
    try:
        result = train_ppo(cfg)
    finally:
        startup.build_policy = original
    policy = captured["policy"]
    for name, param in policy.loaded.model.named_parameters():
        moved = not torch.equal(param.detach(), captured["before"][name])
        assert moved == ("lora_" in name), name
    for name, param in policy.value_head.named_parameters():
        assert not torch.equal(param.detach(), captured["head"][name]), name
    assert result.updates == 1 and result.env_steps == 8


@pytest.mark.e2e
def test_ppo_runs_from_the_cli_and_writes_metrics_and_checkpoints(tmp_path):
    out = run_cli(
        "ppo",
        "--preset",
        "numberline-tiny",
        f"run.output_dir={tmp_path}",
        "ppo.total_env_steps=64",
        "ppo.n_steps=8",
        "ppo.max_new_tokens=8",
        "ppo.save_every=1",
        "ppo.n_epochs=1",
    )
    assert out.returncode == 0, out.stderr
    run = tmp_path / "numberline-tiny/ppo"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["update"] for m in metrics] == [1, 2]
    for m in metrics:
        assert (
            m["rollout/invalid_action_rate"] is not None and m["train/policy_loss"] == m["train/policy_loss"]
        )
    # NumberLine within 10 steps: success (return > 0) implies solved (the target reached), not the reverse.
    assert metrics[-1]["rollout/solved_rate"] >= metrics[-1]["rollout/success_rate"] >= 0.0
    last = (run / "checkpoints/last").resolve()
    assert last.name == "000002"
    assert (last / "adapter_config.json").is_file() and (last / "value_head.safetensors").is_file()
    assert json.loads((last / "vlmppo.json").read_text())["env_steps"] == 64


@pytest.mark.e2e
def test_ppo_runs_on_minigrid_doorkey_tiny_from_the_cli_with_the_static_decoder(tmp_path):
    # model.decoder=static is the default on a GPU; on the CPU it runs the same loop without CUDA graphs.
    out = run_cli(
        "ppo",
        "--preset",
        "minigrid-doorkey-tiny",
        f"run.output_dir={tmp_path}",
        "ppo.total_env_steps=32",
        "ppo.n_steps=8",
        "ppo.max_new_tokens=8",
        "ppo.n_epochs=1",
        "model.decoder=static",
    )
    assert out.returncode == 0, out.stderr
    metrics = (tmp_path / "minigrid-doorkey-tiny/ppo/metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1
    assert (tmp_path / "minigrid-doorkey-tiny/ppo/checkpoints/last/vlmppo.json").is_file()


def test_init_from_sft_starts_from_the_adapter_trainable_with_a_fresh_value_head(tmp_path):
    from safetensors.torch import save_file

    from vlmppo.checkpoints import save_checkpoint
    from vlmppo.models import load_model
    from vlmppo.rl.policy import ValueHead, hidden_size
    from vlmppo.rl.startup import build_policy

    cfg = load_config("probe-color-tiny", overrides=[f"run.output_dir={tmp_path}", "run.name=r"])
    torch.manual_seed(0)
    sft = load_model(cfg.model, for_training=True)
    with torch.no_grad():  # an adapter unlike a fresh one (a fresh LoRA B is zero)
        for name, p in sft.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p))
    trained = {n: p.detach().clone() for n, p in sft.model.named_parameters() if "lora_" in n}
    head = ValueHead(hidden_size(sft.model))
    for p in head.parameters():
        torch.nn.init.constant_(p, 7.0)

    def write(folder):
        sft.model.save_pretrained(folder)
        sft.processor.save_pretrained(folder)
        save_file(head.state_dict(), str(folder / "value_head.safetensors"))  # must not be picked up

    meta = {"stage": "sft", "family": cfg.model.family, "base_model": str(sft.path)}
    save_checkpoint(tmp_path / "r/sft/checkpoints", 5, meta, write)

    policy = build_policy(
        cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"init_from": "sft"})}), "cpu"
    )
    loaded = {n: p for n, p in policy.loaded.model.named_parameters() if "lora_" in n}
    assert loaded.keys() == trained.keys()
    for name, p in loaded.items():
        assert torch.equal(p.detach(), trained[name]), name
        assert p.requires_grad, name
    assert not any(p.requires_grad for n, p in policy.loaded.model.named_parameters() if "lora_" not in n)
    assert all((p != 7.0).any() for p in policy.value_head.parameters())  # a fresh head, not the file's
