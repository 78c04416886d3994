"""The static-cache decoder (models/static_decode.py): the same distribution as the scoring pass, the same
greedy answers as transformers' generate, early finishers compacted out, forced lengths for benchmarks.

On the CPU the decoder runs its loop eagerly (no CUDA graphs); the bookkeeping tested here is the one the
graphs replay on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.models.generation import explicit_generation_config, generate_ids, media_token_ids, to_pil
from vlmppo.models.inputs import build_inputs
from vlmppo.models.static_cache import DecodeBuffers
from vlmppo.models.static_decode import (
    SamplingSpec,
    StaticDecoder,
    answer_lengths,
    bucket_sizes,
    pick_bucket,
    sample_from_logits,
)
from vlmppo.registry import FAMILIES
from vlmppo.rl.policy import ActorCritic, Sampled, ValueHead, answer_mask_from_ids, hidden_size


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
    torch.manual_seed(0)
    return load_model(
        ModelConfig(family=request.param, path=f"tiny:{request.param}", lora=None), for_training=False
    )


def _batch(loaded, n: int, seed: int = 0):
    """``n`` prompts of different lengths (so rows are left-padded differently) with random frames."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, size=(s, s, 3), dtype=np.uint8) for s in rng.choice([64, 80, 96], n)]
    prompts = [("word " * int(k)).strip() + " which way?" for k in rng.integers(0, 12, size=n)]
    return build_inputs(loaded, [to_pil(i) for i in images], prompts)


def _spec(loaded, temperature: float, max_new: int, forced: bool = False) -> SamplingSpec:
    tok = loaded.tokenizer
    return SamplingSpec(
        temperature=temperature,
        max_new_tokens=max_new,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        suppressed=tuple(media_token_ids(loaded.model)),
        forced_lengths=forced,
    )


def _boost_end_token(loaded, factor: float):
    """Scale the output layer's end-token row so answers end after a few to a few tens of tokens."""
    head = loaded.model.get_output_embeddings().weight
    saved = head[loaded.tokenizer.eos_token_id].clone()
    with torch.no_grad():
        head[loaded.tokenizer.eos_token_id] *= factor
    return saved


def test_sampled_answers_score_exactly_as_sampled(loaded):
    # What PPO's ratio needs: the log-prob the sampler drew each token with is the one scoring recomputes.
    batch = _batch(loaded, 5)
    decoder = StaticDecoder(loaded.model, check_every=3)
    torch.manual_seed(1)
    sequences = decoder.generate(batch, _spec(loaded, 0.7, 24))
    prompt_len = batch["input_ids"].shape[1]
    mask = answer_mask_from_ids(sequences[:, prompt_len:], loaded.tokenizer.eos_token_id)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    sampled = Sampled(
        sequences, torch.cat([batch["attention_mask"], mask.long()], 1), prompt_len, mask, extra, []
    )
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)))
    with torch.no_grad():
        scored, _ = policy.score(sampled, temperature=0.7)
    assert mask.sum() >= 5 * 10  # real answers, not a row of end tokens
    assert not torch.isin(sequences[:, prompt_len:][mask], torch.tensor(policy.suppressed)).any()
    torch.testing.assert_close(scored, decoder.last_logp.masked_fill(~mask, 0.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen2-vl", "llava-next"])
def test_greedy_answers_equal_generate_while_finished_rows_are_dropped(family):
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family=family, path=f"tiny:{family}", lora=None), for_training=False)
    _boost_end_token(loaded, 3.0)
    batch = _batch(loaded, 12, seed=3)
    decoder = StaticDecoder(loaded.model, check_every=2)
    ours = decoder.generate(batch, _spec(loaded, 0.0, 40))
    tok = loaded.tokenizer
    # transformers' generate with the same explicit greedy config (the tiny model ships a hostile one)
    greedy = explicit_generation_config(
        tok, media_token_ids(loaded.model), temperature=0.0, max_new_tokens=40
    )
    reference = generate_ids(loaded.model, batch, greedy, decoder="generate")
    lengths = answer_lengths(ours[:, batch["input_ids"].shape[1] :], tok.eos_token_id)
    assert len(set(lengths.tolist())) >= 4  # answers of many lengths: the compaction had work to do
    assert decoder.stats["compactions"] >= 2
    assert decoder.stats["row_steps"] < 12 * decoder.stats["steps"]  # fewer rows computed than 12 per step
    assert torch.equal(ours, reference[:, : ours.shape[1]])
    assert (reference[:, ours.shape[1] :] == tok.pad_token_id).all()  # generate had nothing more to say


def test_fp32_weights_under_bf16_autocast_decode_like_generate():
    # The small models train from scratch in fp32 weights with bf16 autocast (presets *-small): the keys leave the
    # rotary embedding in fp32, the values in bf16, and both go into one cache.
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", lora=None), for_training=False)
    batch = _batch(loaded, 4, seed=5)
    greedy = explicit_generation_config(
        loaded.tokenizer, media_token_ids(loaded.model), temperature=0.0, max_new_tokens=12
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = generate_ids(loaded.model, batch, greedy, decoder="static")
        reference = generate_ids(loaded.model, batch, greedy, decoder="generate")
    assert torch.equal(ours[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    assert torch.equal(ours, reference[:, : ours.shape[1]])


def test_buffers_grow_for_a_larger_batch_and_are_reused_for_a_smaller_one(loaded):
    decoder = StaticDecoder(loaded.model)
    spec = _spec(loaded, 1.0, 6)
    decoder.generate(_batch(loaded, 3), spec)
    first = decoder.buffers
    decoder.generate(_batch(loaded, 6), spec)
    assert decoder.buffers is not first and decoder.buffers.rows == 6
    grown = decoder.buffers
    out = decoder.generate(_batch(loaded, 2), spec)
    assert decoder.buffers is grown and out.shape[0] == 2


def test_a_model_sampled_from_is_freed_with_its_decoder_once_the_caller_drops_it():
    # The decoders are cached per model (weak keys); a decoder holding its model strongly kept every model a
    # process ever sampled from alive, with its KV buffers: bench/gpu_quant.py's later cases measured them.
    import gc
    import weakref

    from vlmppo.models.generation import _STATIC_DECODERS

    torch.manual_seed(0)
    loaded = load_model(ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", lora=None), for_training=False)
    config = explicit_generation_config(
        loaded.tokenizer, media_token_ids(loaded.model), temperature=1.0, max_new_tokens=3
    )
    generate_ids(loaded.model, _batch(loaded, 2), config, decoder="static")
    assert loaded.model in _STATIC_DECODERS
    model_ref = weakref.ref(loaded.model)
    gc.collect()  # earlier tests' garbage first, so only this model's entry goes below
    before = len(_STATIC_DECODERS)
    del loaded, config
    gc.collect()
    assert model_ref() is None
    assert len(_STATIC_DECODERS) == before - 1


@pytest.mark.parametrize("decoder", ["static", "generate"])
def test_forced_lengths_make_every_answer_exactly_that_long(loaded, decoder):
    # Benchmarks force lengths (random weights never stop by themselves); both decoders must obey.
    batch = _batch(loaded, 4)
    forced = torch.tensor([1, 5, 9, 3])
    tok = loaded.tokenizer
    config = explicit_generation_config(tok, media_token_ids(loaded.model), temperature=1.0, max_new_tokens=9)
    out = generate_ids(loaded.model, batch, config, decoder=decoder, forced_lengths=forced)
    answers = out[:, batch["input_ids"].shape[1] :]
    assert answer_lengths(answers, tok.eos_token_id).tolist() == forced.tolist()


def test_bucket_sizes_halve_in_steps_and_the_smallest_fitting_bucket_is_picked():
    assert bucket_sizes(128) == [128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    assert bucket_sizes(5) == [5, 4, 3, 2, 1]
    assert bucket_sizes(1) == [1]
    buckets = bucket_sizes(128)
    assert [pick_bucket(n, buckets) for n in (128, 97, 96, 50, 33, 7, 1)] == [128, 128, 96, 64, 48, 8, 1]
    with pytest.raises(ValueError, match="do not fit"):
        pick_bucket(129, buckets)


def test_keeping_rows_moves_them_to_the_front_and_pads_the_bucket():
    buf = DecodeBuffers(6, 8, 4, layers=1, kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu")
    for tensor in buf.per_row():
        tensor.copy_(torch.arange(6).view(-1, *[1] * (tensor.dim() - 1)).expand_as(tensor).to(tensor.dtype))
    buf.finished.fill_(False)
    buf.keep_rows(torch.tensor([4, 1, 5]), bucket=4)
    assert buf.out[:3, 0].tolist() == [4, 1, 5] and buf.keys[0][:3, 0, 0, 0].tolist() == [4.0, 1.0, 5.0]
    assert buf.finished[:4].tolist() == [False, False, False, True]  # row 3 pads the 4-row bucket
    assert buf.mask[3, 0, 0].tolist() == [0.0] + [float("-inf")] * 7  # it attends to one position only


def test_inverse_cdf_sampling_draws_the_tempered_softmax_and_never_a_suppressed_id():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.5, 1.0, 3.0, -1.0]]).repeat(40000, 1)
    spec = SamplingSpec(temperature=0.8, max_new_tokens=1, eos_id=4, pad_id=4, suppressed=(3,))
    ids, logp = sample_from_logits(logits, spec, torch.tensor([3]))
    expected = torch.softmax(logits[0].index_fill(0, torch.tensor([3]), float("-inf")) / 0.8, dim=0)
    frequencies = torch.bincount(ids, minlength=5).float() / len(ids)
    assert frequencies[3] == 0
    # 40k draws: the standard error of each frequency is below 0.0025; 0.01 is four of them.
    torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, expected.log()[ids], atol=1e-5, rtol=0)


def test_prompt_embeddings_computed_once_give_the_same_answers_and_scores(loaded):
    # The vision tower and M-RoPE index run once per rollout step, for the prefill and the scoring pass.
    from dataclasses import replace

    from vlmppo.models.prompt_embeds import embed_prompts

    batch = _batch(loaded, 4, seed=5)
    spec = _spec(loaded, 0.0, 10)
    prompt = embed_prompts(loaded.model, batch)
    plain = StaticDecoder(loaded.model).generate(batch, spec)
    reused = StaticDecoder(loaded.model).generate(batch, spec, prompt=prompt)
    assert torch.equal(plain, reused)
    prompt_len = batch["input_ids"].shape[1]
    mask = answer_mask_from_ids(plain[:, prompt_len:], loaded.tokenizer.eos_token_id)
    extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    sampled = Sampled(
        plain, torch.cat([batch["attention_mask"], mask.long()], 1), prompt_len, mask, extra, []
    )
    policy = ActorCritic(loaded, ValueHead(hidden_size(loaded.model)))
    with torch.no_grad():
        logp, values = policy.score(sampled, temperature=0.5)
        logp_reused, values_reused = policy.score(replace(sampled, prompt=prompt), temperature=0.5)
    torch.testing.assert_close(logp_reused, logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(values_reused, values, atol=1e-5, rtol=0)


def test_tensors_a_decode_step_reads_live_as_long_as_the_decoder(loaded):
    # A captured CUDA graph reads its inputs at fixed addresses: the suppressed ids must be one tensor
    # for every call (a fresh one per call left an H200's graphs reading freed memory).
    decoder = StaticDecoder(loaded.model)
    spec = _spec(loaded, 1.0, 4)
    assert decoder._suppressed(spec) is decoder._suppressed(spec)
    decoder.generate(_batch(loaded, 2), spec)
    assert decoder.suppressed_ids[spec.suppressed] is decoder._suppressed(spec)


def test_the_static_decoder_takes_plain_configs_and_leaves_a_checkpoints_own_to_generate(loaded):
    from vlmppo.models.generation import checkpoint_generation_config, static_spec

    tok, media = loaded.tokenizer, media_token_ids(loaded.model)
    spec = static_spec(explicit_generation_config(tok, media, temperature=0.7, max_new_tokens=12))
    assert (spec.temperature, spec.max_new_tokens, spec.eos_id) == (0.7, 12, tok.eos_token_id)
    assert set(spec.suppressed) == set(media)
    assert (
        static_spec(explicit_generation_config(tok, media, temperature=0.0, max_new_tokens=5)).temperature
        == 0
    )
    # the tiny checkpoint ships top-k, min-p and a repetition penalty: only transformers' generate applies them
    assert static_spec(checkpoint_generation_config(loaded.model, tok, media, max_new_tokens=5)) is None
