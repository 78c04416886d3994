"""`vlmppo plan`: it proposes settings that its own estimate says fit, as overrides the config accepts, and
says plainly when nothing fits; the memory estimate of a quantised base and of SFT."""

from __future__ import annotations

import shlex

import pytest
from tests.helpers import run_cli

from vlmppo.config import load_config
from vlmppo.memory import GIB, estimate_ppo_memory, estimate_sft_memory, model_facts
from vlmppo.models.quantization import bytes_per_quantized_weight
from vlmppo.planner import as_overrides, candidate_settings, plan_for_gpu, throughput


@pytest.fixture(scope="module")
def qwen_2b():
    cfg = load_config("numberline-qwen")
    return cfg, model_facts(cfg)


@pytest.mark.parametrize("gpu_mem", [16, 24, 48, 80])
def test_the_plan_fits_by_its_own_estimate_and_reloads_from_its_overrides(qwen_2b, gpu_mem):
    cfg, facts = qwen_2b
    plan = plan_for_gpu(cfg, gpu_mem, facts=facts)
    assert plan.chosen is not None and plan.tried > 100
    again = load_config("numberline-qwen", overrides=plan.chosen.overrides)  # the pasted line validates
    assert estimate_ppo_memory(again, facts).peak_gb <= gpu_mem * 0.9
    assert estimate_sft_memory(again, facts).peak_gb <= gpu_mem * 0.9
    assert estimate_ppo_memory(again, facts).peak_gb == pytest.approx(plan.chosen.ppo_peak_gb)
    assert again.env.n_envs == plan.chosen.settings["env.n_envs"]
    assert again.ppo.minibatch_size % again.ppo.micro_batch_size == 0


def test_a_larger_card_never_plans_a_slower_run(qwen_2b):
    cfg, facts = qwen_2b
    speeds = [plan_for_gpu(cfg, g, facts=facts).chosen.env_steps_per_s for g in (16, 24, 48, 80)]
    assert speeds == sorted(speeds)
    assert speeds[-1] > speeds[0]


def test_a_7b_model_on_a_24gb_card_needs_the_4bit_base():
    cfg = load_config("numberline-llava")
    facts = model_facts(cfg)
    assert plan_for_gpu(cfg, 24, quantization="none", facts=facts).chosen is None
    plan = plan_for_gpu(cfg, 24, facts=facts)
    assert plan.chosen.settings["model.quantization"] == "4bit"
    assert "model.quantization=4bit" in plan.chosen.overrides
    assert "ppo.merged_sampling" not in " ".join(plan.chosen.overrides) or (
        "ppo.merged_sampling=false" in plan.chosen.overrides
    )
    assert any("samples from the adapter model" in note for note in plan.notes)


@pytest.mark.parametrize("preset", ["numberline-llava-4bit", "minigrid-doorkey-qwen-4bit"])
def test_the_24gb_presets_fit_24gb_with_the_margin(preset):
    cfg = load_config(preset)
    facts = model_facts(cfg)
    assert estimate_ppo_memory(cfg, facts).peak_gb <= 24 * 0.9
    assert estimate_sft_memory(cfg, facts).peak_gb <= 24 * 0.9
    if preset == "numberline-llava-4bit":  # its settings are the plan's for a 24 GB card
        assert plan_for_gpu(cfg, 24, quantization="4bit", facts=facts).chosen.overrides == []


def test_nothing_fits_a_card_smaller_than_the_smallest_setting():
    cfg = load_config("numberline-llava")
    plan = plan_for_gpu(cfg, 8)
    assert plan.chosen is None
    assert plan.smallest.peak_gb > 8 * 0.9
    assert plan.smallest.settings["model.quantization"] == "4bit"


def test_candidates_never_merge_a_quantised_base_and_fill_whole_micro_batches():
    cfg = load_config("numberline-qwen")
    settings = candidate_settings(cfg, 1, 128, [None, "4bit"])
    assert settings
    for s in settings:
        assert not (s["model.quantization"] and s["ppo.merged_sampling"])
        assert s["ppo.minibatch_size"] % s["ppo.micro_batch_size"] == 0
        assert s["ppo.minibatch_size"] <= s["env.n_envs"] * cfg.ppo.n_steps
    assert as_overrides(cfg, {"env.n_envs": cfg.env.n_envs, "model.quantization": None}) == []
    assert as_overrides(cfg, {"model.quantization": "4bit", "ppo.merged_sampling": False}) == [
        "model.quantization=4bit", "ppo.merged_sampling=false"
    ]  # fmt: skip


def test_more_envs_give_more_env_steps_per_second(qwen_2b):
    cfg, facts = qwen_2b
    assert throughput(cfg, facts, 64, 1) > throughput(cfg, facts, 8, 1)
    assert throughput(cfg, facts, 8, 2) == pytest.approx(2 * throughput(cfg, facts, 8, 1))


def test_a_4bit_base_stores_its_language_model_in_half_a_byte_a_weight(qwen_2b):
    cfg, facts = qwen_2b
    plain = estimate_ppo_memory(cfg, facts)
    q = load_config("numberline-qwen", overrides=["model.quantization=4bit"])
    four = estimate_ppo_memory(q, facts)
    c = facts.counts
    assert 0.5 * c.total < c.quantizable < c.total  # the language model's linears hold most weights
    expected = c.quantizable * bytes_per_quantized_weight("4bit", True) + (c.total - c.quantizable) * 2
    assert four.weights_gb == pytest.approx(expected / GIB)
    assert plain.sampler_gb > 0 and four.sampler_gb == 0  # no merged copy of a quantised base
    assert four.peak_gb < plain.peak_gb
    no_dq = estimate_ppo_memory(load_config("numberline-qwen", overrides=["model.quantization=4bit",
                                                                          "model.double_quant=false"]), facts)  # fmt: skip
    assert no_dq.weights_gb > four.weights_gb


def test_sft_estimate_grows_with_the_batch_and_shrinks_with_checkpointing(qwen_2b):
    cfg, facts = qwen_2b
    one = estimate_sft_memory(load_config("numberline-qwen", overrides=["sft.batch_size=1"]), facts)
    four = estimate_sft_memory(load_config("numberline-qwen", overrides=["sft.batch_size=4"]), facts)
    ckpt = estimate_sft_memory(
        load_config("numberline-qwen", overrides=["sft.batch_size=4", "model.gradient_checkpointing=true"]),
        facts,
    )
    assert four.update_gb == pytest.approx(4 * one.update_gb)
    assert ckpt.update_gb < four.update_gb and four.rollout_gb == 0 and four.sampler_gb == 0
    assert "tokens per sample" in four.describe()


@pytest.mark.e2e
def test_cli_prints_a_paste_line_that_loads(tmp_path):
    out = run_cli("plan", "--preset", "numberline-llava", "--gpu-mem", "24")
    assert out.returncode == 0, out.stderr
    assert "est. PPO peak per GPU" in out.stdout and "expected env-steps/s" in out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith("vlmppo ppo --preset numberline-llava"))
    words = shlex.split(line)[4:]
    assert "model.quantization=4bit" in words
    load_config("numberline-llava", overrides=words)


@pytest.mark.e2e
def test_cli_says_plainly_when_nothing_fits():
    out = run_cli("plan", "--preset", "numberline-llava", "--gpu-mem", "6")
    assert out.returncode == 1
    assert "Nothing fits in 6 GiB" in out.stderr and "Traceback" not in out.stderr


def test_bad_plan_options_are_named_at_once():
    out = run_cli("plan", "--preset", "numberline-tiny", "--gpu-mem", "0", "--margin", "1.5")
    assert out.returncode == 1
    assert "--gpu-mem 0" in out.stderr and "--margin 1.5" in out.stderr


def test_two_gpus_split_the_envs_and_double_the_speed(qwen_2b):
    cfg, facts = qwen_2b
    one = plan_for_gpu(cfg, 24, facts=facts)
    two = plan_for_gpu(cfg, 24, gpus=2, facts=facts)
    assert two.chosen.settings["env.n_envs"] % 2 == 0
    assert two.chosen.env_steps_per_s > one.chosen.env_steps_per_s
    assert any("data parallel" in note for note in two.notes)


def test_sft_dry_run_prints_its_memory_estimate():
    from vlmppo.commands._common import plan_rows

    rows = dict(plan_rows(load_config("numberline-qwen", overrides=["model.quantization=4bit"]), "sft"))
    assert "tokens per sample" in rows["est. GPU memory"]
    assert "4bit base (QLoRA)" in rows["model"]
    ppo = dict(plan_rows(load_config("numberline-qwen", overrides=["model.quantization=4bit"]), "ppo"))
    assert "from the adapter model (unmerged)" in ppo["sampling"]
    assert "merged sampling copy" not in ppo["est. GPU memory"]
