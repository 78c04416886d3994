"""The dry-run's GPU memory estimate: exact counts checked against real models and processors."""

from __future__ import annotations

import numpy as np
import pytest

from vlmppo.config import load_config
from vlmppo.memory import GIB, count_parameters, estimate_ppo_memory, image_tokens
from vlmppo.models import load_model
from vlmppo.models.inputs import build_inputs
from vlmppo.models.loading import load_model_config
from vlmppo.rl.policy import SCORE_CHUNK_VALUES


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl"])
@pytest.mark.parametrize("size", [(64, 64), (300, 300), (192, 352), (800, 800)])
def test_qwen_image_token_count_matches_the_real_processor(family, size):
    from PIL import Image

    from vlmppo.config.schema import ModelConfig

    mcfg = ModelConfig(family=family, path=f"tiny:{family}", lora=None)
    loaded = load_model(mcfg, for_training=False)
    frame = Image.fromarray(np.zeros((*size, 3), dtype=np.uint8))
    ids = build_inputs(loaded, [frame], ["go"])["input_ids"][0]
    real = int((ids == loaded.model.config.image_token_id).sum())
    ip = loaded.processor.image_processor
    lo = getattr(ip, "min_pixels", None) or ip.size.get("shortest_edge")
    hi = getattr(ip, "max_pixels", None) or ip.size.get("longest_edge")
    assert image_tokens(loaded.model.config, family, size[0], size[1], lo, hi) == real


@pytest.mark.parametrize("preset", ["numberline-tiny", "numberline-llava-tiny"])
def test_meta_device_counts_equal_the_loaded_models(preset):
    cfg = load_config(preset)
    loaded = load_model(cfg.model, for_training=True)
    real_total = sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" not in n)
    real_trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    total, trainable = count_parameters(load_model_config(cfg.model), cfg.model.family, cfg.model.lora)
    assert (total, trainable) == (real_total, real_trainable)


def test_estimate_terms_follow_the_run_shapes():
    cfg = load_config("numberline-tiny", overrides=["model.dtype=bfloat16"])
    est = estimate_ppo_memory(cfg)
    text = load_model_config(cfg.model).text_config
    assert est.weights_gb == pytest.approx(est.params * 2 / GIB)
    # doubling the envs doubles the per-env rollout terms and the static KV cache (the scoring pass's
    # logits chunk is the same size at any number of envs)
    more = estimate_ppo_memory(
        load_config("numberline-tiny", overrides=["model.dtype=bfloat16", "env.n_envs=8"])
    )
    chunk = SCORE_CHUNK_VALUES * (2 + 8) / GIB
    assert more.rollout_gb - chunk == pytest.approx(2 * (est.rollout_gb - chunk))
    assert more.decoder_gb == pytest.approx(2 * est.decoder_gb) and est.decoder_gb > 0
    seq, envs = est.prompt_tokens + cfg.ppo.max_new_tokens, cfg.env.n_envs
    head_dim = text.hidden_size // text.num_attention_heads
    kv_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 2
    graph_pool = envs * text.vocab_size * (2 + 16)  # one decode step's sampling intermediates, all envs
    assert est.decoder_gb == pytest.approx((envs * (-(-seq // 64) * 64) * kv_token + graph_pool) / GIB)
    scoring_cache = envs * seq * kv_token
    layer = envs * seq * (3 * text.intermediate_size + 4 * text.hidden_size) * 2
    assert est.rollout_gb == pytest.approx((scoring_cache + layer) / GIB + chunk)
    # transformers' generate: no static buffers, but a cache that grows to the whole sequence by copies (twice
    # that at the moment it grows, more than the scoring pass's)
    generate = estimate_ppo_memory(
        load_config("numberline-tiny", overrides=["model.dtype=bfloat16", "model.decoder=generate"])
    )
    assert generate.decoder_gb == 0
    assert generate.rollout_gb == pytest.approx(est.rollout_gb + envs * seq * kv_token / GIB)
    # gradient checkpointing shrinks the update's activations
    ckpt = estimate_ppo_memory(
        load_config(
            "numberline-tiny", overrides=["model.dtype=bfloat16", "model.gradient_checkpointing=true"]
        )
    )
    assert ckpt.update_gb < est.update_gb
    assert est.peak_gb > est.weights_gb + est.trainable_state_gb
    # without bf16 autocast every adapted linear keeps an fp32 copy of its input: 2 more bytes a value
    fp32 = estimate_ppo_memory(
        load_config("numberline-tiny", overrides=["model.dtype=bfloat16", "ppo.mixed_precision=no"])
    )
    adapter_inputs = 6 * text.hidden_size + text.intermediate_size
    per_layer_extra = seq * cfg.ppo.micro_batch_size * adapter_inputs * 2
    assert fp32.update_gb - est.update_gb == pytest.approx(text.num_hidden_layers * per_layer_extra / GIB)


def test_an_unknown_offline_model_gives_no_estimate():
    cfg = load_config("numberline-tiny", overrides=["model.path=someone/not-a-model-we-know"])
    assert estimate_ppo_memory(cfg) is None


def test_critic_free_runs_leave_out_exactly_the_value_heads_weights_gradient_and_moments():
    from vlmppo.memory import value_head_bytes
    from vlmppo.rl.policy import ValueHead

    gae = estimate_ppo_memory(load_config("numberline-tiny"))
    for advantage in ("grpo", "gigpo"):
        cfg = load_config("numberline-tiny", overrides=[f"ppo.advantage={advantage}", "ppo.group_size=2"])
        saved = (gae.trainable_state_gb - estimate_ppo_memory(cfg).trainable_state_gb) * GIB
        assert saved == pytest.approx(value_head_bytes(64))
    head = ValueHead(64)  # fp32 weights + gradient + two AdamW moments = 16 bytes per parameter
    assert value_head_bytes(64) == 16 * sum(p.numel() for p in head.parameters())


def test_data_parallel_estimates_are_per_gpu():
    # Each GPU holds the whole model and its own envs: the same rollout and update terms. DDP adds a bucket copy
    # of the trainable gradients; ZeRO-2 shards gradients and AdamW moments over the ranks.
    cfg = load_config("numberline-qwen", overrides=["model.path=tiny:qwen2-vl", "model.family=qwen2-vl"])
    one = estimate_ppo_memory(cfg)
    ddp = estimate_ppo_memory(cfg, world=2)
    zero2 = estimate_ppo_memory(
        cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"launch": "zero2"})}), world=4
    )
    assert (ddp.rollout_gb, ddp.update_gb, ddp.weights_gb) == (one.rollout_gb, one.update_gb, one.weights_gb)
    assert ddp.trainable_state_gb == pytest.approx(one.trainable_state_gb * 1.25)
    assert zero2.trainable_state_gb == pytest.approx(one.trainable_state_gb * (1 + 3 / 4) / 4)


def test_the_7b_4bit_preset_estimate_is_the_hand_computed_one():
    # llava-v1.6-mistral-7b (released config: h 4096, I 14336, 32 layers, 8 KV heads of 128, vocab 32064) with
    # the numberline-llava-4bit preset: 8 envs, micro-batch 8, 256-token answers, checkpointing, NF4 with double
    # quantisation, LoRA r=128 on all linears, a value head (gae). Every term by hand, in bytes:
    from vlmppo.memory import OVERHEAD, estimate_sft_memory, model_facts

    cfg = load_config("numberline-llava-4bit")
    assert (cfg.env.n_envs, cfg.ppo.micro_batch_size, cfg.ppo.max_new_tokens, cfg.sft.batch_size) == (
        8,
        8,
        256,
        4,
    )
    facts = model_facts(cfg)
    total, quantizable, lora = 7_566_747_648, 6_979_321_856, 335_544_320
    assert (facts.counts.total, facts.counts.quantizable, facts.counts.trainable) == (
        total,
        quantizable,
        lora,
    )
    # prompt: a 300×300 frame is one 336 view (576 tokens) + one tile (576) + 24 row ends; ~200 text tokens
    assert facts.prompt_tokens == 576 + 576 + 24 + 200 == 1376
    weights = quantizable * (0.5 + 1 / 64 + 4 / (64 * 256)) + (total - quantizable) * 2
    value_head = (4096 * 1024 + 1024 + 1024 * 512 + 512 + 513) * 16
    trainable = lora * 16 + value_head  # fp32 value, gradient, two AdamW moments
    seq, kv_token = 1376 + 256, 2 * 32 * 8 * 128 * 2
    # 1632 positions rounded up to 64; the decode graphs' pool: 8 rows of logits (bf16) + 4 fp32 copies
    static_kv = 8 * 1664 * kv_token + 8 * 32064 * (2 + 16)
    dequantized = 4096 * 14336 * 2  # the largest NF4 layer in bf16
    rollout = 8 * seq * kv_token + 8 * seq * (3 * 14336 + 4 * 4096) * 2 + 2**27 * 10 + dequantized
    # checkpointing: each layer's bf16 input for 8 × 1632 tokens, plus one layer recomputed (8h + 3I values;
    # no adapter input copies: NF4 LoRA under autocast, no dropout in PPO); answer logits at 2 + 16 bytes
    update = 8 * seq * (32 * 4096 * 2 + (8 * 4096 + 3 * 14336) * 2) + 8 * 256 * 32064 * 18 + dequantized
    assert update > rollout
    expected = OVERHEAD * (weights + trainable + static_kv + update) / GIB
    est = estimate_ppo_memory(cfg, facts)
    assert est.peak_gb == pytest.approx(expected, rel=1e-9)
    assert est.peak_gb == pytest.approx(19.12, abs=0.01)  # under 24 less a 10% margin
    # SFT: 4 samples of 1376 + 256 tokens; dropout 0.05 keeps a mask and the dropout's bf16 output per adapter
    tokens = 4 * 1632
    layer = (8 * 4096 + 3 * 14336) * 2 + (6 * 4096 + 14336) * 3
    sft_update = tokens * (32 * 4096 * 2 + layer) + tokens * 32064 * 2 * 2 + dequantized
    sft_expected = OVERHEAD * (weights + lora * 16 + sft_update) / GIB
    assert estimate_sft_memory(cfg, facts).peak_gb == pytest.approx(sft_expected, rel=1e-9)


def test_adapters_keep_an_input_copy_on_a_plain_base_only_and_ppo_ignores_lora_dropout():
    from vlmppo.memory import adapter_input_bytes

    assert adapter_input_bytes(None, True, 0.0) == 2  # the bf16 copy autocast makes of peft's fp32 cast
    assert adapter_input_bytes(None, False, 0.0) == 4  # the fp32 cast itself
    assert adapter_input_bytes("4bit", True, 0.0) == 0  # bitsandbytes layers feed the base layer's input
    assert adapter_input_bytes("4bit", True, 0.05) == adapter_input_bytes(None, True, 0.05) == 3
    base = ["model.dtype=bfloat16", "model.quantization=4bit"]
    with_dropout = estimate_ppo_memory(
        load_config("numberline-tiny", overrides=[*base, "model.lora.dropout=0.3"])
    )
    without = estimate_ppo_memory(load_config("numberline-tiny", overrides=[*base, "model.lora.dropout=0"]))
    assert with_dropout.update_gb == without.update_gb  # PPO sets every dropout to 0 (rl/startup.py)


def test_the_2b_estimate_at_128_envs_is_the_hand_computed_one():
    # Issue 18's loop (bench/gpu_ppo.sh): Qwen2-VL-2B (released config: h 1536, I 8960, 28 layers, 2 KV heads
    # of 128, vocab 151936) in bf16, LoRA r=128 on all linears with a merged sampling copy, the static
    # decoder, 128 envs, 128-token answers, micro-batch 8, a value head. Every term by hand, in bytes:
    from vlmppo.memory import OVERHEAD, model_facts

    cfg = load_config(
        "numberline-qwen",
        overrides=[
            "env.n_envs=128",
            "ppo.max_new_tokens=128",
            "ppo.micro_batch_size=8",
            "ppo.minibatch_size=256",
        ],
    )
    facts = model_facts(cfg)
    total, lora = 2_208_985_600, 147_718_144
    assert (facts.counts.total, facts.counts.trainable) == (total, lora)
    assert facts.prompt_tokens == 121 + 200  # a 300×300 frame: 11×11 tokens of 28×28 pixels; ~200 of text
    seq, kv_token = 321 + 128, 2 * 28 * 2 * 128 * 2
    weights = total * 2 * 2  # the trained model and its merged sampling copy
    trainable = lora * 16 + (1536 * 1024 + 1024 + 1024 * 512 + 512 + 513) * 16
    # K/V buffers over 449 positions rounded to 512; the decode graphs' pool: 128 rows of logits + 4 fp32 copies
    decoder = 128 * 512 * kv_token + 128 * 151936 * (2 + 16)
    # the scoring pass's K/V over 449 tokens, one no-grad layer's activations, one fp32 logits chunk
    rollout = 128 * seq * kv_token + 128 * seq * (3 * 8960 + 4 * 1536) * 2 + 2**27 * 10
    # 8 × 449 tokens through 28 layers at (8h + 3I) bf16 values + the LoRA inputs' bf16 copies (6 of h, 1 of I),
    # then the answer logits at the start of the backward: bf16 + four fp32 tensors of 8 × 128 × V
    update = 8 * seq * 28 * ((8 * 1536 + 3 * 8960) * 2 + (6 * 1536 + 8960) * 2) + 8 * 128 * 151936 * 18
    assert update > rollout
    est = estimate_ppo_memory(cfg, facts)
    assert est.decoder_gb == pytest.approx(decoder / GIB, rel=1e-12)
    assert est.rollout_gb == pytest.approx(rollout / GIB, rel=1e-12)
    assert est.update_gb == pytest.approx(update / GIB, rel=1e-12)
    assert est.peak_gb == pytest.approx(OVERHEAD * (weights + trainable + decoder + update) / GIB, rel=1e-9)
    assert est.peak_gb == pytest.approx(28.48, abs=0.01)
