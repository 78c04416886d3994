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
    assert est.decoder_gb == pytest.approx(envs * (-(-seq // 64) * 64) * kv_token / GIB)
    prefill = envs * est.prompt_tokens * kv_token
    layer = envs * seq * (3 * text.intermediate_size + 4 * text.hidden_size) * 2
    assert est.rollout_gb == pytest.approx((prefill + layer) / GIB + chunk)
    # transformers' generate: no static buffers, but a cache that grows to the whole sequence by copies
    generate = estimate_ppo_memory(
        load_config("numberline-tiny", overrides=["model.dtype=bfloat16", "model.decoder=generate"])
    )
    assert generate.decoder_gb == 0
    assert generate.rollout_gb == pytest.approx(est.rollout_gb + 2 * envs * seq * kv_token / GIB)
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
