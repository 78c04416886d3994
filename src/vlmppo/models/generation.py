"""Batched text generation from (frame, prompt) pairs: PPO's sampling, `collect --policy checkpoint`, the
`hf` labeller and evaluation. One `generate` call for the whole batch, left-padded, with one complete
``GenerationConfig`` that vlmppo chose: a checkpoint's ``generation_config.json`` (repetition penalty, top-k,
...) applies only where a user asks for it (``eval.generation`` / ``label.generation`` = ``checkpoint``)."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from dataclasses import dataclass

from vlmppo.models.inputs import build_inputs, to_pil
from vlmppo.models.loading import LoadedModel, load_model

MEDIA_TOKEN_KEYS = (
    "image_token_id",
    "image_token_index",
    "video_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)


def media_token_ids(model) -> list[int]:
    """Ids of the image/video placeholder tokens, which an answer must never contain.

    A sampled ``<|image_pad|>`` in an answer makes the next forward count one more image token than
    there are image features and crash; an untrained model samples them now and then. Generation
    suppresses these ids, and PPO scoring masks them the same way so both see one distribution.
    """
    config = model.config
    found = {getattr(config, key, None) for key in MEDIA_TOKEN_KEYS}
    return sorted(int(i) for i in found if isinstance(i, int) and i >= 0)


# Neutral values of every GenerationConfig field that reshapes the next-token distribution. transformers
# fills each field left None from the model's generation_config.json (then from its global defaults, where
# top_k is 50), so "not set" is never neutral: each is set here, and generate_ids hides the checkpoint's file.
_PLAIN = dict(
    top_p=1.0,
    typical_p=1.0,
    min_p=None,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    repetition_penalty=1.0,
    encoder_repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0,
    bad_words_ids=None,
    sequence_bias=None,
    min_length=0,
    exponential_decay_length_penalty=None,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    begin_suppress_tokens=None,
    renormalize_logits=False,
    remove_invalid_values=False,
    guidance_scale=None,
    watermarking_config=None,
    num_beams=1,
    num_return_sequences=1,
)
# What `describe_generation` reports of a checkpoint's own settings (the fields that change the answers).
_DESCRIBED = ("do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
              "no_repeat_ngram_size", "bad_words_ids", "num_beams")  # fmt: skip


def explicit_generation_config(tokenizer, suppressed: list[int], *, temperature: float, max_new_tokens: int):
    """The complete decoding of an answer, owing nothing to the checkpoint's ``generation_config.json``.

    ``temperature`` 0 is greedy; otherwise plain sampling from ``softmax(logits / temperature)`` over the
    whole vocabulary: no top-k/top-p/min-p, no repetition penalty, no banned n-grams. That is exactly the
    distribution PPO's scoring pass recomputes (``ActorCritic.score``). Stops at the tokenizer's eos (the
    chat template's end of turn) and never samples ``suppressed`` (image/video placeholders).

    Returns:
        A ``transformers.GenerationConfig`` for ``generate_ids``.
    """
    from transformers import GenerationConfig

    sampling = dict(do_sample=True, temperature=float(temperature), top_k=0) if temperature > 0 else {}
    return GenerationConfig(
        **_PLAIN,
        **(sampling or {"do_sample": False}),
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        suppress_tokens=list(suppressed) or None,
        use_cache=True,
    )


def checkpoint_generation_config(model, tokenizer, suppressed: list[int], *, max_new_tokens: int):
    """The checkpoint's own ``generation_config.json`` (sampling, temperature, top-k/top-p, repetition
    penalty, ... as its authors ship them), with vlmppo's answer length, end of turn, padding and
    suppressed placeholder ids. For ``eval.generation`` / ``label.generation`` = ``checkpoint`` only: PPO
    never samples from it (its scoring would not match)."""
    import copy

    from transformers import GenerationConfig

    config = copy.deepcopy(_owner(model).generation_config)
    # What generate does with the fields the file leaves unset, done here so the config says what runs.
    defaults = getattr(GenerationConfig, "_get_default_generation_params", None)
    if defaults is not None:
        config.update(**defaults(), defaults_only=True)
    config.max_new_tokens = max_new_tokens
    config.max_length = None
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    config.suppress_tokens = sorted(set(config.suppress_tokens or []) | set(suppressed)) or None
    return config


def describe_generation(config) -> str:
    """``greedy``, ``sampled at temperature 0.7``, or every setting that shapes the answers
    (``do_sample=True, temperature=0.7, top_k=20, repetition_penalty=1.05, ...``) for other configs."""
    plain = all(getattr(config, k, None) == v for k, v in _PLAIN.items() if k in _DESCRIBED)
    if plain and not config.do_sample:
        return "greedy"
    if plain and config.top_k in (0, None):
        return f"sampled at temperature {config.temperature:g}"
    settings = {k: getattr(config, k, None) for k in _DESCRIBED}
    return ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)


def _owner(model):
    """The transformers model whose ``generation_config`` ``generate`` reads (under a PEFT wrapper)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def _only(model, config):
    """``generate`` fills every field ``config`` leaves None from the model's own generation config; for the
    call, that is ``config`` itself, so nothing of the checkpoint's file comes in."""
    owner = _owner(model)
    saved = owner.generation_config
    owner.generation_config = config
    try:
        yield
    finally:
        owner.generation_config = saved


def resolve_decoder(name: str, device) -> str:
    """``model.decoder``: ``auto`` is the static-cache decoder on a CUDA device, ``generate`` elsewhere."""
    if name != "auto":
        return name
    return "static" if str(device).startswith("cuda") else "generate"


_STATIC_DECODERS = weakref.WeakKeyDictionary()


def static_decoder_for(model, *, compile: bool = False):
    """The model's ``StaticDecoder`` (buffers and CUDA graphs kept between calls), made on first use;
    ``compile``: the one whose decode forward goes through ``torch.compile``."""
    from vlmppo.models.static_decode import StaticDecoder

    decoders = _STATIC_DECODERS.setdefault(model, {})
    if compile not in decoders:
        decoders[compile] = StaticDecoder(model, compile=compile)
    return decoders[compile]


def static_spec(config):
    """The ``SamplingSpec`` of ``config`` for the static decoder, or None when ``config`` asks for more than
    greedy or plain sampling (a checkpoint's own settings: only transformers' ``generate`` applies those)."""
    from vlmppo.models.static_decode import SamplingSpec

    described = describe_generation(config)
    if described != "greedy" and not described.startswith("sampled at"):
        return None
    return SamplingSpec(
        temperature=float(config.temperature) if config.do_sample else 0.0,
        max_new_tokens=int(config.max_new_tokens),
        eos_id=config.eos_token_id,
        pad_id=config.pad_token_id,
        suppressed=tuple(config.suppress_tokens or ()),
    )


def generate_ids(
    model,
    batch,
    config,
    *,
    decoder="generate",
    forced_lengths=None,
    prompt=None,
    prefill=None,
    **generate_kwargs,
):
    """One batched sampling pass over a left-padded prompt batch with exactly ``config``.

    Args:
        batch: ``build_inputs`` output on the model's device (``input_ids``: [B, P], ...).
        config: From ``explicit_generation_config`` or ``checkpoint_generation_config``; the model's own
            ``generation_config`` is hidden during the call.
        decoder: ``static`` (``models/static_decode.py``: static KV cache, CUDA graphs on a GPU, early
            finishers out), ``static-compiled`` (the same with the decode forward through
            ``torch.compile``) or ``generate`` (transformers' ``generate``, the reference). A config the
            static decoder cannot apply (a checkpoint's top-k, repetition penalty, ...) uses ``generate``.
        forced_lengths: Benchmarks only: ``[B]`` answer lengths to force (the end token banned before the
            last position and placed there), so throughput compares across runs of random weights.
        prompt: The batch's ``PromptEmbeddings`` (static decoders only): the prefill reuses them.
        prefill: With ``prompt``, the prompts' ``Prefill`` already run (static decoders only; others ignore it).
        generate_kwargs: Non-decoding arguments of ``generate`` (e.g. ``synced_gpus``).

    Returns:
        [B, P + T] prompt + answer ids (or generate's output object when ``config`` asks for one).
    """
    import torch

    spec = static_spec(config) if decoder.startswith("static") else None
    with torch.no_grad():
        if spec is not None:
            spec = dataclasses.replace(spec, forced_lengths=forced_lengths is not None)
            decode = static_decoder_for(model, compile=decoder == "static-compiled")
            return decode.generate(batch, spec, forced_lengths, prompt, prefill)
        if forced_lengths is not None:
            from transformers import LogitsProcessorList

            prompt_len = batch["input_ids"].shape[1]
            processor = ForcedLengths(forced_lengths, prompt_len, config.eos_token_id)
            generate_kwargs["logits_processor"] = LogitsProcessorList([processor])
        with _only(model, config):
            return model.generate(**batch, generation_config=config, **generate_kwargs)


class ForcedLengths:
    """A logits processor (benchmarks only): answer ``i`` ends with the end token at position
    ``lengths[i] - 1`` and nowhere before, as ``SamplingSpec.forced_lengths`` does for the static decoder."""

    def __init__(self, lengths, prompt_len: int, eos_id: int):
        self.lengths, self.prompt_len, self.eos_id = lengths, prompt_len, eos_id

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        lengths = self.lengths.to(scores.device)
        scores[step < lengths - 1, self.eos_id] = float("-inf")
        at_end = step == lengths - 1
        scores[at_end] = float("-inf")
        scores[at_end, self.eos_id] = 0.0
        return scores


@dataclass
class Generator:
    """Batched answers of a loaded model.

    Attributes:
        generation: ``explicit`` (greedy or plain sampling, nothing else: ``explicit_generation_config``) or
            ``checkpoint`` (the checkpoint's ``generation_config.json``; the temperature is then its own).
        decoder: ``model.decoder`` (auto | static | static-compiled | generate).
    """

    loaded: LoadedModel
    device: str = "cpu"
    generation: str = "explicit"
    decoder: str = "auto"

    def generation_config(self, *, temperature: float, max_new_tokens: int):
        """The ``GenerationConfig`` ``generate_answers`` uses for these settings."""
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        if self.generation == "checkpoint":
            return checkpoint_generation_config(
                model, tokenizer, media_token_ids(model), max_new_tokens=max_new_tokens
            )
        return explicit_generation_config(
            tokenizer, media_token_ids(model), temperature=temperature, max_new_tokens=max_new_tokens
        )

    def generate_answers(
        self, images, prompts: list[str], *, temperature: float, max_new_tokens: int, histories=None
    ) -> tuple[list[str], list[list[int]]]:
        """Answer each (image, prompt) pair; ``temperature`` 0 is greedy (unused with ``checkpoint``).

        Args:
            images: one frame per prompt (uint8 ``[H, W, 3]`` arrays or PIL images).
            prompts: the task texts (the chat template is applied here).
            histories: optional earlier turns per prompt (``models.inputs.Turn``, oldest first).

        Returns:
            The answer texts (without special tokens) and each answer's generated ids, through its
            end-of-turn token (padding after it dropped).
        """
        tokenizer = self.loaded.tokenizer
        pil = [to_pil(im) for im in images]
        batch = build_inputs(self.loaded, pil, list(prompts), histories=histories).to(self.device)
        config = self.generation_config(temperature=temperature, max_new_tokens=max_new_tokens)
        decoder = resolve_decoder(self.decoder, self.device)
        out = generate_ids(self.loaded.model, batch, config, decoder=decoder)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        eos = tokenizer.eos_token_id
        ids = [row[: row.index(eos) + 1] if eos in row else row for row in new_tokens.tolist()]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True), ids

    def generate_text(
        self, images, prompts: list[str], *, temperature: float, max_new_tokens: int, histories=None
    ) -> list[str]:
        """The answer texts only (see ``generate_answers``)."""
        return self.generate_answers(
            images, prompts, temperature=temperature, max_new_tokens=max_new_tokens, histories=histories
        )[0]


def load_generator(model_cfg, *, device: str = "cpu", generation: str = "explicit") -> Generator:
    """Load a model for inference only (no LoRA wrapping, frozen weights) on one device.

    Large labeller models go to ``device`` whole; sharding over several GPUs is not built yet.
    """
    generator = load_model(model_cfg, device=device, for_training=False)
    return Generator(generator, device, generation, model_cfg.decoder)
