"""The KL penalty's reference is the policy PPO started from: the SFT adapter, or the base for a fresh LoRA."""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from vlmppo.config import load_config
from vlmppo.rl import train_ppo
from vlmppo.rl.losses import kl_to_reference
from vlmppo.rl.policy import REFERENCE_ADAPTER
from vlmppo.rl.startup import build_policy, reference_adapter

RUN = ["run.name=r", "ppo.kl_coef=0.1", "ppo.max_new_tokens=8"]


def write_sft_checkpoint(cfg, scale: float = 0.1):
    """runs/r/sft/checkpoints/000005: a LoRA adapter unlike a fresh one (whose B is zero), as SFT writes it."""
    from vlmppo.checkpoints import save_checkpoint
    from vlmppo.config import run_dir
    from vlmppo.models import load_model

    torch.manual_seed(0)
    sft = load_model(cfg.model, for_training=True)
    with torch.no_grad():
        for name, p in sft.model.named_parameters():
            if "lora_" in name:
                p.add_(scale * torch.randn_like(p))

    def write(folder):
        sft.model.save_pretrained(folder)
        sft.processor.save_pretrained(folder)

    meta = {"stage": "sft", "family": cfg.model.family, "base_model": str(sft.path)}
    return save_checkpoint(run_dir(cfg) / "sft/checkpoints", 5, meta, write)


def sample_and_score(policy):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(3)]
    torch.manual_seed(1)
    sampled = policy.sample(
        images, ["Which way?", "Left or right?", "Go."], temperature=0.7, max_new_tokens=8
    )
    with torch.no_grad():
        token_logp, _ = policy.score(sampled, temperature=0.7)
        with policy.loaded.model.disable_adapter():  # the reference before the fix
            base_logp, _ = policy.score(sampled, temperature=0.7)
    return sampled, token_logp, base_logp


def test_starting_from_sft_the_kl_reference_is_the_sft_policy_exactly(tmp_path):
    cfg = load_config("probe-color-tiny", overrides=[*RUN, f"run.output_dir={tmp_path}", "ppo.init_from=sft"])
    write_sft_checkpoint(cfg)
    policy = build_policy(cfg, "cpu")
    trainable = {n for n, p in policy.loaded.model.named_parameters() if p.requires_grad}
    assert trainable and not any(REFERENCE_ADAPTER in n for n in trainable)
    sampled, token_logp, base_logp = sample_and_score(policy)
    ref_logp = policy.reference_logprobs(sampled, temperature=0.7)
    mask = sampled.answer_mask
    assert kl_to_reference(token_logp, ref_logp, mask).item() == 0.0  # update 0: the same policy
    assert kl_to_reference(token_logp, base_logp, mask).item() > 1e-3  # the base: not where PPO started
    assert {n for n, p in policy.loaded.model.named_parameters() if p.requires_grad} == trainable
    assert policy.loaded.model.active_adapter == "default"


def test_starting_from_a_fresh_lora_the_reference_is_the_model_with_the_adapter_disabled(tmp_path):
    cfg = load_config("probe-color-tiny", overrides=[*RUN, f"run.output_dir={tmp_path}"])
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu")
    assert REFERENCE_ADAPTER not in policy.loaded.model.peft_config
    with torch.no_grad():  # as after some updates
        for name, p in policy.loaded.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1 * torch.randn_like(p))
    sampled, token_logp, base_logp = sample_and_score(policy)
    ref_logp = policy.reference_logprobs(sampled, temperature=0.7)
    assert torch.equal(ref_logp, base_logp)
    assert kl_to_reference(token_logp, ref_logp, sampled.answer_mask).item() > 1e-4


def test_the_first_minibatch_from_sft_has_no_kl_and_the_reference_survives_a_changed_sft_folder(tmp_path):
    overrides = [
        *RUN,
        f"run.output_dir={tmp_path}",
        "ppo.init_from=sft",
        "env.n_envs=2",
        "ppo.n_steps=2",
        "ppo.minibatch_size=2",
        "ppo.micro_batch_size=2",
        "ppo.total_env_steps=4",
        "ppo.target_kl=1e-9",
    ]  # fmt: skip  (any movement stops the update after its first minibatch)
    cfg = load_config("probe-color-tiny", overrides=overrides)
    sft = write_sft_checkpoint(cfg)
    sft_weights = load_file(str(sft / "adapter_model.safetensors"))
    result = train_ppo(cfg)
    assert result.last_metrics["train/optimizer_steps"] == 1
    assert result.last_metrics["train/kl_ref"] < 1e-10  # before the fix: the KL to the base, > 1e-3

    saved = load_file(str(result.checkpoint / REFERENCE_ADAPTER / "adapter_model.safetensors"))
    assert saved.keys() == sft_weights.keys()
    assert all(torch.equal(saved[k], sft_weights[k]) for k in saved)
    write_sft_checkpoint(cfg, scale=0.5)  # SFT run again meanwhile: `sft` now names other weights
    assert reference_adapter(cfg, result.checkpoint) == result.checkpoint / REFERENCE_ADAPTER
    resumed = build_policy(cfg, "cpu", resume_from=result.checkpoint)
    loaded = {n: p for n, p in resumed.loaded.model.named_parameters() if f".{REFERENCE_ADAPTER}." in n}
    assert len(loaded) == len(sft_weights)
    for name, p in loaded.items():
        key = name.replace(f".{REFERENCE_ADAPTER}.", ".")
        assert torch.equal(p.detach(), sft_weights[key]) and not p.requires_grad, name


def test_with_the_shared_prefill_the_reference_at_update_0_is_still_exactly_the_sft_policy(tmp_path):
    # The static decoder's rollout scores the answers over the prefill's cache; the reference pass runs its
    # own prefill the same way, so at update 0 of an SFT start the KL is exactly 0 there too.
    cfg = load_config("probe-color-tiny", overrides=[*RUN, f"run.output_dir={tmp_path}", "ppo.init_from=sft"])
    write_sft_checkpoint(cfg)
    policy = build_policy(cfg, "cpu")
    policy.decoder, policy.shared_prefill = "static", True
    sampled, token_logp, _ = sample_and_score(policy)
    assert sampled.prefill is not None
    ref_logp = policy.reference_logprobs(sampled, temperature=0.7)
    assert kl_to_reference(token_logp, ref_logp, sampled.answer_mask).item() == 0.0
    assert torch.equal(ref_logp, token_logp)
