"""The VLM as an actor-critic: batched sampling, then teacher-forced scoring of exactly the sampled ids.

Scoring re-uses the generated token ids (never re-tokenized text, whose ids can differ from what was
sampled), so the log-probs the PPO update computes are those of the answers the envs acted on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vlmppo.models.generation import explicit_generation_config, generate_ids, media_token_ids, to_pil
from vlmppo.models.inputs import build_inputs
from vlmppo.models.loading import LoadedModel
from vlmppo.models.prompt_embeds import (
    Prefill,
    PromptEmbeddings,
    answer_hidden_states,
    embed_prompts,
    inputs_with_answers,
    prefill_inputs,
    run_prefill,
)
from vlmppo.models.vision_cache import clear_feature_cache
from vlmppo.rl.logprob import token_logprobs

# The peft adapter name of the KL reference when PPO starts from an adapter (see reference_logprobs).
REFERENCE_ADAPTER = "reference"


class ValueHead(nn.Module):
    """MLP hidden -> 1024 -> 512 -> 1 in fp32, on the final hidden state of the last prompt token."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, H] (any dtype) -> values [B] fp32, also inside a bf16 autocast region."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.net(hidden.float()).squeeze(-1)


@dataclass
class Sampled:
    """A batch of sampled answers and the exact inputs needed to score them again.

    Attributes:
        sequences: [B, P + T] left-padded prompt ids followed by the answer ids.
        attention_mask: [B, P + T] 1 on real prompt tokens and on answer tokens up to the first
            end-of-turn token (included); 0 on padding and after it.
        prompt_len: P, the padded prompt length.
        answer_mask: [B, T] bool, the answer tokens that count (the same as attention_mask[:, P:]).
        extra: the other model inputs of the prompt batch (pixel values, grid sizes, ...).
        texts: the decoded answers, without special tokens.
        prompt: the prompts' ``PromptEmbeddings`` when sampling computed them (the static decoder):
            scoring then reuses them instead of running the vision tower again.
        prefill: the prompts' forward through the trained model (its cache, last hidden state and logits)
            when sampling ran it: scoring then runs the answer tokens only. Valid for the trained weights
            as they were at sampling time, with the adapter active.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_len: int
    answer_mask: torch.Tensor
    extra: dict
    texts: list[str]
    prompt: PromptEmbeddings | None = None
    prefill: Prefill | None = None


# Logit values per chunk of the rollout's scoring pass (fp32 and the log-softmax: ~1.5 GB at this size).
SCORE_CHUNK_VALUES = 2**27


def answer_mask_from_ids(answer_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] ids -> [B, T] bool: tokens up to and including the first eos; nothing after it."""
    is_eos = answer_ids == eos_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return ~after_eos


def hidden_size(model) -> int:
    config = model.config
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


def adapter_state(model) -> tuple:
    """Which PEFT adapters ``model`` computes with right now: its active adapter(s) and whether they are
    disabled (``disable_adapter()``); ``()`` for a model without adapters."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):  # every adapted layer follows the model's switches
            return (tuple(module.active_adapters), bool(module.disable_adapters))
    return ()


@contextlib.contextmanager
def _input_casts_off(layers: list[nn.Module]):
    """peft's ``cast_input_dtype_enabled`` off on ``layers`` for the block, then as it was."""
    before = [getattr(layer, "cast_input_dtype_enabled", True) for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, before, strict=True):
            layer.cast_input_dtype_enabled = value


class ActorCritic:
    """The policy (the VLM) and the value head (None for the critic-free GRPO/GiGPO: values are then 0).

    Args:
        merged_sampling: Sample from a merged copy of the LoRA model (``rl/merged.py``): about twice the
            decode speed on a GPU for one more copy of the weights. Call ``weights_changed()`` after each
            optimizer phase so the copy is refreshed before the next ``sample``.
        autocast: A context factory wrapped around the model's forward passes (``Accelerator.autocast``
            for bf16 mixed precision); the value head and the log-probs are computed outside it, in fp32.
        decoder: How ``sample`` decodes: ``static`` or ``generate`` (``models.generation.generate_ids``).
        value_detach: The value head reads detached hidden states (``ppo.value_detach``): its loss trains
            the head only.

    Attributes:
        forced_lengths: Benchmarks only: a function of the batch size returning ``[B]`` answer lengths
            that ``sample`` forces (random weights never end by themselves). None in training.
        shared_prefill: With a static decoder, ``sample`` runs the prompts' forward once through the trained
            model (``prefill``) for the decoder and the scoring pass, which then runs the answer tokens only.
            Off by default, and not for training: exact in fp32, but under bf16 on a GPU the split forward
            rounds differently from the update's one forward over prompt + answer (H200, Qwen2-VL-2B shape:
            0.07 nats per token, and 84-91% of answers' PPO ratios outside the clip at unchanged weights;
            scoring over the shared prompt embeddings: 0 and 1.9e-6; ``bench/gpu_scoring_gap.py``).
        update_from_embeddings: The update's ``collate`` builds the prompts' embeddings as the rollout does
            when nothing trained reaches them (``prompt_embeddings_constant``; default). False: the model's
            forward embeds them, vision tower included (the benchmark's "before").
    """

    def __init__(
        self,
        loaded: LoadedModel,
        value_head: ValueHead | None,
        device: str = "cpu",
        *,
        merged_sampling: bool = False,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        decoder: str = "generate",
        value_detach: bool = False,
    ):
        self.loaded, self.device = loaded, device
        self.value_detach = value_detach
        self.value_head = value_head.to(device) if value_head is not None else None
        self.autocast = autocast
        self.decoder = decoder
        self.forced_lengths: Callable[[int], torch.Tensor] | None = None
        self.shared_prefill = False  # benchmarks only (see above): the scoring pass must match the update's
        self.update_from_embeddings = True  # False: benchmarks only (see above)
        inner = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
        # The scoring pass runs the backbone and applies the output layer itself: it needs the last
        # hidden states only (not every layer's) and logits for the answer positions only, in chunks.
        self.backbone, self.lm_head = inner.model, inner.get_output_embeddings()
        self.sampler = None
        if merged_sampling and hasattr(loaded.model, "merge_and_unload"):
            from vlmppo.rl.merged import MergedSampler

            self.sampler = MergedSampler(loaded.model)
        # Never sampled (see media_token_ids), so also masked when scoring: one distribution for both.
        self.suppressed = media_token_ids(loaded.model)

    def weights_changed(self) -> None:
        """The trained weights moved (an update ran): the merged sampling copy must be refreshed, and the
        image features kept per frame (``models/vision_cache.py``) computed again."""
        clear_feature_cache(self.loaded.model)
        if self.sampler is not None:
            self.sampler.stale = True

    def sampling_config(self, *, temperature: float, max_new_tokens: int):
        """The complete ``GenerationConfig`` of ``sample``: plain sampling from ``softmax(logits / T)`` minus
        the placeholder ids, which is what ``score`` recomputes; nothing comes from the checkpoint's
        ``generation_config.json`` (``models/generation.py``)."""
        return explicit_generation_config(
            self.loaded.tokenizer,
            self.suppressed,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )

    @torch.no_grad()
    def sample(
        self, images, prompts: list[str], *, temperature: float, max_new_tokens: int, histories=None
    ) -> Sampled:
        """Answers for all (image, prompt) pairs in one ``generate`` (from the merged copy when there is one).
        ``histories``: each prompt's earlier turns (``build_inputs``); the answer is scored alone."""
        tokenizer = self.loaded.tokenizer
        batch = build_inputs(
            self.loaded, [to_pil(im) for im in images], list(prompts), histories=histories
        ).to(self.device)
        generator = self.loaded.model
        if self.sampler is not None:
            if self.sampler.stale:
                self.sampler.refresh(self.loaded.model)
            generator = self.sampler.model
        forced = self.forced_lengths(len(prompts)) if self.forced_lengths is not None else None
        prompt = prefill = None
        with self.autocast():
            if self.decoder.startswith("static"):
                # One vision-tower pass and one prompt forward (through the trained model) serve both the
                # decoder and the scoring pass, which then runs the answer tokens only.
                prompt = embed_prompts(self.loaded.model, batch)
                prefill = self.prefill(prompt) if self.shared_prefill else None
            out = generate_ids(
                generator,
                batch,
                self.sampling_config(temperature=temperature, max_new_tokens=max_new_tokens),
                decoder=self.decoder,
                forced_lengths=forced,
                prompt=prompt,
                prefill=prefill,
            )
        prompt_len = batch["input_ids"].shape[1]
        answers = out[:, prompt_len:]
        mask = answer_mask_from_ids(answers, tokenizer.eos_token_id)
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        texts = tokenizer.batch_decode(
            answers.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True
        )
        attention = torch.cat([batch["attention_mask"], mask.long()], dim=1)
        return Sampled(out, attention, prompt_len, mask, extra, texts, prompt, prefill)

    def prefill(self, prompt: PromptEmbeddings) -> Prefill:
        """The prompts through the trained model (``models/prompt_embeds.run_prefill``; under autocast)."""
        with self.autocast(), self.adapter_casts_skipped():
            prefill = run_prefill(self.loaded.model, self.lm_head, prompt)
        prefill.state = adapter_state(self.loaded.model)
        return prefill

    def adapter_casts_skipped(self):
        """A context for passes under autocast: peft casts every adapted layer's input to the adapter's dtype
        (fp32) and autocast casts it straight back to bf16 for the matmul, the same bits as never casting it
        (bf16 -> fp32 -> bf16 is exact), and in the backward the same two casts of the input's gradient;
        skipping them saves those passes over each layer's input (on the 2B shape's 196 adapted layers, ~780 of
        the ~1,800 copy kernels an H200 profile counted per update micro-batch). Outside autocast, nothing:
        there the fp32 adapter needs its cast."""
        device_type = torch.device(self.device).type
        if not torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return _input_casts_off(self._adapted_layers)

    @functools.cached_property
    def _adapted_layers(self) -> list[nn.Module]:
        """The model's peft layers, found once: peft's own ``disable_input_dtype_casting`` walks every module
        of the model twice per call, and the update calls this once per micro-batch."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [m for m in self.loaded.model.modules() if isinstance(m, BaseTunerLayer)]

    @torch.no_grad()
    def reference_logprobs(self, sampled: Sampled, *, temperature: float) -> torch.Tensor:
        """[B, T] fp32 log-probs of the answer ids under the KL reference: the policy PPO started from.

        Starting from an adapter (``ppo.init_from``, e.g. SFT), the reference is that adapter, loaded a second
        time as a frozen peft adapter named ``reference`` (``build_policy``) and switched in for this pass;
        starting from a fresh LoRA (whose B is zero), it is the base model with the adapter disabled, which is
        exactly the starting policy. Disabling the adapter of an SFT start would instead pull PPO back toward
        the untrained base model.

        Why a second adapter, computed once per sample at rollout time: it costs one adapter's weights (a
        second full model would cost the base again), is saved in every PPO checkpoint (``reference/``, by
        peft's ``save_pretrained``), so ``--resume`` keeps the same reference even if the SFT folder has changed
        since, and the rollout stores its per-token log-probs so the update needs no reference pass per
        epoch. The rollout's own ``score`` runs in the same mode, so at update 0 of an SFT start the reference
        log-probs equal the policy's exactly.
        """
        model = self.loaded.model
        if sampled.prompt is not None and not self.prompt_embeddings_constant():
            # the shared prompt embeddings hold the trained vision tower/projector; the reference has its own
            sampled = dataclasses.replace(sampled, prompt=None, prefill=None)

        def score():  # the same passes as the policy's score (its own prefill when that had one)
            ref = sampled
            if sampled.prefill is not None:
                ref = dataclasses.replace(sampled, prefill=self.prefill(sampled.prompt))
            return self.score(ref, temperature=temperature)[0]

        if REFERENCE_ADAPTER not in getattr(model, "peft_config", {}):
            with model.disable_adapter():
                return score()
        trained = model.active_adapter
        model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
        try:
            return score()
        finally:
            model.set_adapter(trained)  # trainable again (peft's set_adapter sets requires_grad)

    @torch.no_grad()
    def prompt_values(self, batch) -> torch.Tensor:
        """V(s) of a prompt batch (``build_inputs`` output, on the device): the value head on the last
        prompt token's final hidden state, as ``score`` computes it; [B] fp32. Logits only for that token."""
        return self.values(self.prompt_features(batch))

    @torch.no_grad()
    def prompt_features(self, batch, prompt: PromptEmbeddings | None = None) -> torch.Tensor:
        """[B, H] the last prompt token's final hidden states of a prompt batch (what the value head reads),
        without gradient: the value warm-up trains the head on them alone. Through the shared prompt
        embeddings (``embed_prompts``: each frame's features cached, the M-RoPE index on the host once per
        distinct row; transformers' own index walks the batch row by row with host syncs on every row);
        ``prompt``: the batch's, when the caller has them already."""
        with self.autocast():
            prompt = prompt if prompt is not None else embed_prompts(self.loaded.model, batch)
            return self.backbone(**prefill_inputs(prompt), use_cache=False).last_hidden_state[:, -1]

    def prompt_embeddings_constant(self) -> bool:
        """Whether no gradient can reach what ``embed_prompts`` computes from: the token embedding table, the
        vision tower, the projector (every backbone part outside the language model). True under LoRA without
        ``modules_to_save``; False when any of them trains (full fine-tuning, a trained projector)."""
        backbone = self.backbone
        parts = [backbone.get_input_embeddings()] + [
            child for name, child in backbone.named_children() if name != "language_model"
        ]
        own = backbone.parameters(recurse=False)  # e.g. LLaVA-NeXT's image_newline
        return not any(p.requires_grad for p in [*own, *(q for part in parts for q in part.parameters())])

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, H] last-prompt-token hidden states -> [B] fp32 values (zeros without a value head)."""
        if self.value_head is None:
            return torch.zeros(hidden.shape[0], device=hidden.device)
        return self.value_head(hidden)

    def score(self, sampled: Sampled, *, temperature: float, return_logits: bool = False):
        """Teacher-forced pass over prompt + answer.

        Returns:
            token_logp: [B, T] fp32 log-probs of the answer ids under logits / temperature (0 where
                answer_mask is False);
            values: [B] fp32 value of the state (the last prompt token's final hidden state);
            and with ``return_logits`` a third item, the answer positions' logits / temperature
            [B, T, V] (for the entropy bonus).

        Without gradients (the rollout) the output layer runs over a few rows at a time: the full
        ``[B, T, V]`` logits of 128 envs × 128 tokens × 152k words would take 10 GB in fp32.
        """
        extra = dict(sampled.extra)
        if "mm_token_type_ids" in extra:  # Qwen2-VL (5.x) needs it over the whole sequence: 0 on answers
            pad = torch.zeros_like(sampled.sequences[:, sampled.prompt_len :])
            extra["mm_token_type_ids"] = torch.cat([extra["mm_token_type_ids"], pad], dim=1)
        p = sampled.prompt_len
        grad = return_logits or torch.is_grad_enabled()
        targets = sampled.sequences[:, p:]
        prefill = sampled.prefill
        if prefill is not None and prefill.state != adapter_state(self.loaded.model):
            prefill = None  # computed with other weights active (e.g. the adapter since disabled)
        if prefill is not None and sampled.prompt is not None and not grad:
            with self.autocast(), self.adapter_casts_skipped():  # the prompt's part is the prefill's
                answer_hidden = answer_hidden_states(
                    self.loaded.model, sampled.prompt, prefill, targets, sampled.answer_mask
                )
            values = self.values(prefill.hidden)
            return self._chunked_logprobs(answer_hidden, targets, sampled.answer_mask, temperature), values
        if sampled.prompt is not None and (not grad or self.prompt_embeddings_constant()):
            # No vision tower or position index again; with gradients only where none can reach what
            # the embeddings were made from (the update's ``collate`` attaches them only then).
            inputs = inputs_with_answers(
                self.loaded.model, sampled.prompt, sampled.sequences[:, p:], sampled.answer_mask
            )
        else:
            inputs = {"input_ids": sampled.sequences, "attention_mask": sampled.attention_mask, **extra}
        with self.autocast(), self.adapter_casts_skipped():
            hidden = self.backbone(**inputs).last_hidden_state
        features = hidden[:, p - 1]  # ppo.value_detach: the value loss then never reaches the model
        values = self.values(features.detach() if self.value_detach else features)
        answer_hidden = hidden[:, p - 1 : -1]  # the positions that predict the answer tokens
        if grad:
            logits = self._answer_logits(answer_hidden)
            token_logp = token_logprobs(logits, targets, temperature).masked_fill(~sampled.answer_mask, 0.0)
            if return_logits:
                return token_logp, values, logits / temperature
            return token_logp, values
        return self._chunked_logprobs(answer_hidden, targets, sampled.answer_mask, temperature), values

    def _chunked_logprobs(self, answer_hidden, targets, answer_mask, temperature: float) -> torch.Tensor:
        """[B, T] fp32 log-probs of ``targets`` from the hidden states predicting them, the output layer run
        over a few rows at a time (no gradients); 0 outside ``answer_mask``."""
        token_logp = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
        rows = max(1, SCORE_CHUNK_VALUES // max(1, targets.shape[1] * self.lm_head.weight.shape[0]))
        for start in range(0, targets.shape[0], rows):
            chunk = slice(start, start + rows)
            token_logp[chunk] = token_logprobs(
                self._answer_logits(answer_hidden[chunk]), targets[chunk], temperature
            )
        return token_logp.masked_fill(~answer_mask, 0.0)

    def _answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[b, T, H] -> [b, T, V] logits with the never-sampled placeholder ids at -inf."""
        with self.autocast():
            logits = self.lm_head(hidden)
        if self.suppressed:
            logits = logits.index_fill(-1, torch.tensor(self.suppressed, device=logits.device), float("-inf"))
        return logits
