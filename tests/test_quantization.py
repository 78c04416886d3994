"""Quantised bases (``model.quantization``): the config, the bitsandbytes settings, and the one clear error on a
machine without CUDA (or without bitsandbytes), raised before any file is written or weight read."""

from __future__ import annotations

import importlib.util

import pytest
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.errors import ConfigError, ModelError
from vlmppo.models import FAMILIES
from vlmppo.models.quantization import (
    bnb_config,
    bytes_per_quantized_weight,
    check_quantization,
    quantized_linear_names,
)

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def test_quantization_loads_from_overrides_with_double_quant_on_by_default():
    cfg = load_config("numberline-tiny", overrides=["model.quantization=4bit"])
    assert (cfg.model.quantization, cfg.model.double_quant) == ("4bit", True)
    cfg = load_config("numberline-tiny", overrides=["model.quantization=8bit", "model.double_quant=false"])
    assert (cfg.model.quantization, cfg.model.double_quant) == ("8bit", False)
    assert load_config("numberline-tiny").model.quantization is None


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["model.quantization=3bit"], "model.quantization"),
        (["model.quantization=4bit", "model.lora=null"], "needs LoRA"),
        (["model.quantization=4bit", "ppo.merged_sampling=true"], "ppo.merged_sampling=true"),
        (["model.quantization=4bit", "sft.launch=zero3"], "sft.launch=zero3"),
    ],
)
def test_impossible_quantization_settings_are_config_errors(overrides, named):
    with pytest.raises(ConfigError) as err:
        load_config("numberline-tiny", overrides=overrides)
    assert named in err.value.message


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bitsandbytes_leaves_vision_tower_projector_and_output_layer_alone(family):
    import torch

    cfg = load_config("numberline-tiny", overrides=[f"model.family={family}", f"model.path=tiny:{family}",
                                                     "model.quantization=4bit"])  # fmt: skip
    adapter = FAMILIES[family]
    q = bnb_config(cfg.model, adapter, torch.bfloat16)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert set(q.llm_int8_skip_modules) == {adapter.vision_tower, adapter.projector, "lm_head"}
    eight = bnb_config(cfg.model.model_copy(update={"quantization": "8bit"}), adapter, torch.bfloat16)
    assert eight.load_in_8bit and not eight.load_in_4bit


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-next"])
def test_only_the_language_models_linear_layers_are_quantised(family):
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmppo.models.loading import load_model_config

    cfg = load_config("numberline-tiny", overrides=[f"model.family={family}", f"model.path=tiny:{family}"])
    adapter = FAMILIES[family]
    config = load_model_config(cfg.model)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    names = quantized_linear_names(model, adapter)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert names and all(n.startswith(adapter.language_model + ".") for n in names)
    left = set(linears) - set(names)
    assert "lm_head" in left and any(n.startswith(adapter.vision_tower) for n in left)


def test_four_bits_with_double_quantisation_cost_a_little_over_half_a_byte():
    assert bytes_per_quantized_weight("4bit", True) == pytest.approx(0.516, abs=1e-3)
    assert bytes_per_quantized_weight("4bit", False) == pytest.approx(0.5625)
    assert bytes_per_quantized_weight("8bit", True) == 1.0


def test_quantization_on_a_cpu_is_one_error_before_the_model_is_touched():
    from vlmppo.models import load_model

    cfg = load_config("numberline-tiny", overrides=["model.quantization=4bit", "model.path=/no/such/model"])
    with pytest.raises(ModelError) as err:  # the quantisation error, not the missing path
        load_model(cfg.model, device="cpu")
    assert "needs a CUDA GPU" in err.value.message and "model.quantization=null" in err.value.hint


@pytest.mark.skipif(HAS_BNB, reason="bitsandbytes is installed here")
def test_quantization_without_bitsandbytes_names_the_extra():
    cfg = load_config("numberline-tiny", overrides=["model.quantization=4bit"])
    with pytest.raises(ModelError) as err:
        check_quantization(cfg.model, "cuda")
    assert "bitsandbytes" in err.value.message and "vlmppo[quant]" in err.value.hint


def test_an_unquantised_model_needs_nothing():
    check_quantization(load_config("numberline-tiny").model, "cpu")


def test_ppo_engine_refuses_a_quantised_base_on_cpu_before_the_run_folder(tmp_path):
    from vlmppo.rl import train_ppo

    cfg = load_config(
        "numberline-tiny",
        overrides=["model.quantization=4bit", "run.device=cpu", f"run.output_dir={tmp_path}"],
    )
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        train_ppo(cfg)
    assert not (tmp_path / cfg.run.name / "ppo").exists()  # (only the stage lock was taken)


def test_sft_engine_refuses_a_quantised_base_on_cpu_before_the_run_folder(tmp_path):
    from vlmppo.sft import train_sft

    cfg = load_config(
        "numberline-tiny",
        overrides=["model.quantization=4bit", "run.device=cpu", f"run.output_dir={tmp_path}"],
    )
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        train_sft(cfg)
    assert not (tmp_path / cfg.run.name / "sft").exists()  # (only the stage lock was taken)


def test_merged_sampling_is_off_for_a_quantised_base():
    from vlmppo.rl.startup import uses_merged_sampling

    plain = load_config("numberline-tiny", overrides=["ppo.merged_sampling=auto"])
    quantised = load_config("numberline-tiny", overrides=["model.quantization=4bit"])
    assert uses_merged_sampling(plain, "cuda") and not uses_merged_sampling(quantised, "cuda")


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["ppo", "sft", "pipeline"])
def test_cli_says_quantization_needs_cuda_in_one_paragraph(tmp_path, command):
    out = run_cli(
        command, "--preset", "numberline-tiny", "model.quantization=4bit", "run.device=cpu",
        f"run.output_dir={tmp_path}", "--to" if command == "pipeline" else "run.seed=0",
        *(["ppo"] if command == "pipeline" else []),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "model.quantization=4bit needs a CUDA GPU" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_4bit_base_samples_scores_updates_and_saves_only_the_adapter_on_a_gpu(tmp_path, family):
    """The run's own path on a CUDA GPU: quantised load, LoRA, static decoder (CUDA graphs through the 4-bit
    linears), scoring, an update, the KL reference pass, and an adapter-only save."""
    import bitsandbytes as bnb
    import torch

    from vlmppo.accel import make_accelerator
    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.benchmark.runner import AnswerLengths
    from vlmppo.benchmark.update import measure_update
    from vlmppo.rl.startup import build_policy

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = load_config("numberline-tiny", overrides=[
        f"model.family={family}", f"model.path=tiny:{family}", "model.quantization=4bit", "run.device=cuda",
        "env.n_envs=2", "ppo.micro_batch_size=2", "ppo.minibatch_size=2", "ppo.max_new_tokens=8", "ppo.kl_coef=0.1",
    ])  # fmt: skip
    policy = build_policy(cfg, "cuda", accelerator=make_accelerator("cuda", "bf16"))
    model = policy.loaded.model
    quantised = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    tower = FAMILIES[family].vision_tower
    assert quantised and not any(f".{tower}." in n for n in quantised)
    assert policy.sampler is None and policy.decoder == "static"
    policy.forced_lengths = AnswerLengths(8, None, 0)
    steps: list = []
    measure_rollout(policy, cfg, 2, repeats=1, keep=steps)
    assert steps[0].ref_logp is not None and torch.isfinite(steps[0].ref_logp).all()  # the KL reference pass
    trained = {
        n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n
    }
    measure_update(policy, cfg, steps, repeats=1)
    assert all(not torch.equal(trained[n], p) for n, p in model.named_parameters() if n in trained)
    model.save_pretrained(tmp_path)
    assert not any(p.name.startswith("model") for p in tmp_path.iterdir())  # no base weights saved
    assert (tmp_path / "adapter_model.safetensors").is_file()
