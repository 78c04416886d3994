"""bf16 autocast (``ppo.mixed_precision``): the model's matmuls run in bf16, the value head and every
log-prob stay in fp32, and the PPO loop trains end to end under it. CPU autocast stands in for the GPU's:
the same Accelerator, the same code path, another device type."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.helpers import run_cli

from vlmppo.accel import make_accelerator, precision_for
from vlmppo.config import load_config
from vlmppo.rl.startup import build_policy


def _dtypes_seen(policy) -> dict[str, torch.dtype]:
    """Hooks that record the output dtype of one LoRA layer and of the value head's first layer."""
    seen: dict[str, torch.dtype] = {}
    lora = next(m for n, m in policy.loaded.model.named_modules() if n.endswith("lora_A.default"))
    lora.register_forward_hook(lambda m, i, o: seen.__setitem__("lora", o.dtype))
    policy.value_head.net[0].register_forward_hook(lambda m, i, o: seen.__setitem__("value_head", o.dtype))
    return seen


def _sample_and_score(policy):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8) for _ in range(2)]
    sampled = policy.sample(images, ["Left or right?", "Go."], temperature=0.7, max_new_tokens=6)
    return policy.score(sampled, temperature=0.7)


def test_bf16_autocast_runs_the_model_in_bf16_and_keeps_value_and_logprobs_in_fp32(tmp_path):
    cfg = load_config("probe-color-tiny", overrides=[f"run.output_dir={tmp_path}"])
    torch.manual_seed(0)
    policy = build_policy(cfg, "cpu", accelerator=make_accelerator("cpu", "bf16"))
    seen = _dtypes_seen(policy)
    token_logp, values = _sample_and_score(policy)
    assert seen == {"lora": torch.bfloat16, "value_head": torch.float32}
    assert token_logp.dtype == torch.float32 and values.dtype == torch.float32
    assert torch.isfinite(token_logp).all() and torch.isfinite(values).all()

    torch.manual_seed(0)  # without autocast (the CPU default) the adapter computes in fp32
    plain = build_policy(cfg, "cpu", accelerator=make_accelerator("cpu", "no"))
    seen = _dtypes_seen(plain)
    _sample_and_score(plain)
    assert seen == {"lora": torch.float32, "value_head": torch.float32}


def test_auto_precision_is_bf16_on_a_gpu_only():
    assert precision_for("auto", "cuda") == "bf16" and precision_for("auto", "cuda:1") == "bf16"
    assert precision_for("auto", "cpu") == "no"
    assert precision_for("no", "cuda") == "no" and precision_for("bf16", "cpu") == "bf16"


def test_one_process_can_make_accelerators_of_different_precisions():
    # `vlmppo pipeline` runs SFT and PPO in one process; accelerate alone refuses a second precision.
    assert make_accelerator("cpu", "bf16").mixed_precision == "bf16"
    assert make_accelerator("cpu", "no").mixed_precision == "no"


@pytest.mark.e2e
def test_ppo_from_the_cli_trains_under_bf16_autocast(tmp_path):
    out = run_cli(
        "ppo",
        "--preset",
        "probe-constant-tiny",
        "ppo.mixed_precision=bf16",
        "env.n_envs=4",
        "ppo.n_steps=2",
        "ppo.total_env_steps=16",
        "ppo.minibatch_size=8",
        "ppo.micro_batch_size=4",
        f"run.output_dir={tmp_path}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    run = tmp_path / "probe-constant-tiny/ppo"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite([r["train/policy_loss"], r["train/value_loss"], r["train/grad_norm"]]).all()
        assert r["train/optimizer_steps"] > 0 and r["train/bad_minibatches"] == 0
    assert (run / "checkpoints/last/value_head.safetensors").is_file()


def test_mixed_precision_no_on_the_command_line_is_no_not_yaml_false():
    cfg = load_config("probe-color-tiny", overrides=["ppo.mixed_precision=no"])
    assert cfg.ppo.mixed_precision == "no"
