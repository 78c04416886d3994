"""Fast batched sampling: a static KV cache, decode steps replayed as CUDA graphs, early finishers out.

``transformers``' ``generate`` spends most of a decode step launching kernels on the host (a 2B-shaped
model at batch 128 took 26 ms per step on an H200 where the arithmetic needs about 2), and keeps every row
in the batch until the longest answer ends. This module samples the same distribution with less waste:

1. **Prefill** is the model's own forward over the left-padded prompt batch (images included), with the
   usual dynamic cache; its keys/values are copied once into pre-allocated buffers
   ``[rows, kv_heads, length, head_dim]`` per layer.
2. **Decode** runs only the language model on one token per row, writing its keys/values in place at the
   current position. Every tensor it touches has a fixed address, so on a GPU one step is captured once
   as a CUDA graph per *bucket* (a number of rows) and then replayed: no host work, no host syncs.
3. **Early finishers out**: every ``check_every`` steps the host reads which rows have ended (the only
   sync); when the unfinished rows fit a smaller bucket, they are moved to the front of every buffer and
   decoding continues with that bucket's graph. Answers of 30-80 tokens in a batch whose longest runs to
   128 then cost far less than 128 full-batch steps.

The sampled distribution is exactly the one PPO's scoring pass recomputes: ``softmax(logits / T)`` with
the image/video placeholder ids removed, nothing else (no top-k/top-p, no repetition penalty, whatever the
checkpoint's ``generation_config.json`` says). Sampling uses the inverse CDF of that distribution with one
uniform number per row, so a zero-probability token can never be drawn.

Attention in decode uses grouped queries without copying keys/values per query head
(``models/static_cache.py``, which also holds the buffers); positions follow the prefill's convention
(M-RoPE deltas for Qwen-VL, the cache index otherwise), so scoring the answer later sees the same positions.

On the CPU the same loop runs eagerly (no graphs); tests check its bookkeeping and that its samples score
as sampled.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass

import torch

from vlmppo.models.decode_fusions import fused_norms, fused_rotary, plain_norms, rotary_modules
from vlmppo.models.static_cache import DecodeBuffers, decode_attention, slot_cache


@dataclass(frozen=True)
class SamplingSpec:
    """What to sample: ``temperature`` 0 is greedy; ``suppressed`` ids are never sampled.

    ``forced_lengths`` (benchmarks only, it changes the distribution): each row's answer is made exactly
    ``lengths[row]`` tokens long, the end token banned before its last position and put there.
    """

    temperature: float
    max_new_tokens: int
    eos_id: int
    pad_id: int
    suppressed: tuple[int, ...] = ()
    forced_lengths: bool = False


def bucket_sizes(rows: int) -> list[int]:
    """Row counts that get their own decode graph, largest first: ``rows``, then 3/4 and 1/2 steps of
    powers of two below it, down to 1 (128 -> 128, 96, 64, 48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1)."""
    sizes = {rows}
    p = 1
    while p < rows:
        sizes.update(s for s in (p, p * 3 // 2) if 0 < s < rows)
        p *= 2
    return sorted(sizes, reverse=True)


def pick_bucket(n_rows: int, buckets: list[int]) -> int:
    """The smallest bucket that holds ``n_rows`` rows."""
    fitting = [b for b in buckets if b >= n_rows]
    if not fitting:
        raise ValueError(f"{n_rows} rows do not fit the largest bucket ({max(buckets)})")
    return min(fitting)


def sample_from_logits(
    logits: torch.Tensor, spec: SamplingSpec, suppressed: torch.Tensor | None, step=None, lengths=None
):
    """One token per row from ``logits`` [b, V] (any float dtype) -> (ids [b] int64, log-probs [b] fp32).

    ``step`` ([1] int64, the answer position being sampled) and ``lengths`` ([b] int64) force answer
    lengths (``SamplingSpec.forced_lengths``). Capturable in a CUDA graph: no host syncs, fixed shapes.
    """
    # One fp32 copy, then in place: each pass over [b, V] (152k words) costs at 128 rows.
    scores = logits.to(torch.float32, copy=True)
    if suppressed is not None:
        scores.index_fill_(1, suppressed, float("-inf"))
    if lengths is not None:
        eos = scores[:, spec.eos_id]
        scores[:, spec.eos_id] = torch.where(step < lengths - 1, torch.full_like(eos, float("-inf")), eos)
    if spec.temperature > 0:
        scores.div_(spec.temperature)
    logp = torch.log_softmax(scores, dim=-1)
    if spec.temperature > 0:
        cdf = logp.exp().cumsum_(dim=-1)
        # u * total, not u: the cumulative sum of fp32 probabilities ends a hair away from 1.
        u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
        ids = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1).squeeze(1)
    else:
        ids = scores.argmax(dim=-1)
    if lengths is not None:
        ids = torch.where(step == lengths - 1, torch.full_like(ids, spec.eos_id), ids)
    return ids, logp.gather(1, ids[:, None]).squeeze(1)


def _inner_model(model):
    """The transformers ``*ForConditionalGeneration`` under a PEFT wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class StaticDecoder:
    """Samples answers for a left-padded prompt batch with a static KV cache (see the module docstring).

    One decoder per model: it keeps its buffers and captured graphs between calls and grows them when a
    batch needs more rows or positions. The model's weights may change between calls (PPO updates them in
    place), but must not be replaced by new tensors: graphs hold their addresses.

    Args:
        model: A ``*ForConditionalGeneration`` model, or a PEFT model around one.
        use_graphs: Replay decode steps as CUDA graphs (default: when the model is on a CUDA device).
        check_every: Decode steps between the host's looks at which rows have finished.
        compile: Compile the language model's decode forward with ``torch.compile`` (fuses the many small
            element-wise kernels of a step; the first call compiles, for a minute or more).
    """

    def __init__(self, model, *, use_graphs: bool | None = None, check_every: int = 8, compile: bool = False):
        inner = _inner_model(model)
        # Weakly: `static_decoder_for` keys its decoders by the model in a WeakKeyDictionary, and a value that
        # held its key would keep every model ever sampled from (weights, KV buffers, graph pools) alive.
        self._model = weakref.ref(model)
        self.language_model = inner.model.language_model
        self.forward = self.language_model
        if compile:  # rows vary by bucket: one dynamic-shape compilation serves them all
            self.forward = torch.compile(self.language_model, dynamic=True)
        self.lm_head = inner.get_output_embeddings()
        # Fewer kernels per decode step (models/decode_fusions.py); compiled steps fuse on their own.
        self.fuse_norms = self.fuse_rotary = not compile
        self.norms, self.rotary_owners = plain_norms(self.language_model), rotary_modules(self.language_model)
        self.rotary_swaps: dict = {}  # made in the graphs' warm-up step, before any capture
        self.device = next(model.parameters()).device
        self.use_graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        self.check_every = check_every
        self.buffers: DecodeBuffers | None = None
        self.caches: dict[int, object] = {}
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.suppressed_ids: dict[tuple, torch.Tensor] = {}
        self.mrope = False
        self.last_logp: torch.Tensor | None = None  # [B, T] log-probs of the last call's answers
        # (spec, rows, prompt length, graph key or None) of the last call (benchmarks)
        self.last_call: tuple | None = None
        # Of the last call: decode steps run, rows computed summed over them, and compactions.
        self.stats = {"steps": 0, "row_steps": 0, "compactions": 0}

    @torch.no_grad()
    def generate(
        self, batch, spec: SamplingSpec, lengths: torch.Tensor | None = None, prompt=None, prefill=None
    ):
        """Sample one answer per prompt; returns prompt + answer ids ``[B, P + T]`` (pad after each end
        token, T the longest answer), as ``generate`` would. ``self.last_logp`` [B, T] holds each sampled
        token's log-prob under the distribution it was drawn from (0 on padding). ``lengths`` [B]: the
        forced answer lengths when ``spec.forced_lengths``. ``prompt``: the batch's ``PromptEmbeddings``
        (``models/prompt_embeds.py``), when the caller has them: the prefill then skips the vision tower.
        ``prefill``: with ``prompt``, the prompts' ``Prefill`` the caller ran (through the trained model, for
        its scoring pass too): no prefill here then."""
        input_ids = batch["input_ids"]
        rows, prompt_len = input_ids.shape
        out = None
        if prefill is not None:
            kv, last_logits, deltas = prefill.cache, prefill.logits, prompt.rope_deltas
        elif prompt is not None:
            from vlmppo.models.prompt_embeds import prefill_inputs

            out = self._model()(**prefill_inputs(prompt), use_cache=True, logits_to_keep=1)
            kv, last_logits, deltas = out.past_key_values, out.logits[:, -1], prompt.rope_deltas
        else:
            out = self._model()(**batch, use_cache=True, logits_to_keep=1)
            kv, last_logits, deltas = (
                out.past_key_values,
                out.logits[:, -1],
                getattr(out, "rope_deltas", None),
            )
        self.mrope = deltas is not None
        self._ensure_buffers(rows, prompt_len + spec.max_new_tokens, spec.max_new_tokens, kv)
        suppressed = self._suppressed(spec)
        graph_key = self._ensure_graphs(spec, suppressed)
        buf = self.buffers
        if spec.forced_lengths:
            buf.lengths[:rows] = lengths.to(buf.lengths).clamp(1, spec.max_new_tokens)
        first, first_logp = sample_from_logits(
            last_logits, spec, suppressed, *self._forcing(spec, rows, torch.zeros_like(buf.step))
        )
        self._load_prompt(batch["attention_mask"], kv, deltas, first, first_logp, spec)
        del kv, last_logits, out  # a prefill of our own: its cache is freed before decoding
        buckets = bucket_sizes(buf.rows)
        bucket = pick_bucket(rows, buckets)
        self.last_call = (spec, rows, prompt_len, graph_key)
        buf.pad_rows(rows, bucket)
        slots = torch.arange(rows, device=self.device)  # slot i holds the answer of prompt slots[i]
        ids = torch.full((rows, spec.max_new_tokens), spec.pad_id, dtype=torch.long, device=self.device)
        logp = torch.zeros((rows, spec.max_new_tokens), dtype=torch.float32, device=self.device)
        done_steps = 1
        self.stats = {"steps": 0, "row_steps": 0, "compactions": 0}
        while done_steps < spec.max_new_tokens:
            n = min(self.check_every, spec.max_new_tokens - done_steps)
            for _ in range(n):
                self._run_step(bucket, spec, suppressed, graph_key)
            done_steps += n
            self.stats["steps"] += n
            self.stats["row_steps"] += n * bucket
            finished = buf.finished[: len(slots)].cpu()  # the loop's one host sync per check_every steps
            if finished.all():
                break
            active = (~finished).nonzero().squeeze(1)
            smaller = pick_bucket(len(active), buckets)
            if smaller < bucket:
                gone = finished.nonzero().squeeze(1).to(self.device)
                ids.index_copy_(0, slots[gone], buf.out[gone])
                logp.index_copy_(0, slots[gone], buf.logp[gone])
                active = active.to(self.device)
                buf.keep_rows(active, smaller)
                slots, bucket = slots[active], smaller
                self.stats["compactions"] += 1
        n = len(slots)
        ids.index_copy_(0, slots, buf.out[:n])
        logp.index_copy_(0, slots, buf.logp[:n])
        width = int(answer_lengths(ids, spec.eos_id).max())
        self.last_logp = logp[:, :width]
        return torch.cat([input_ids, ids[:, :width]], dim=1)

    # -- set-up --------------------------------------------------------------------------------------------

    def _suppressed(self, spec: SamplingSpec) -> torch.Tensor | None:
        """The never-sampled ids as a device tensor that lives as long as the decoder: a captured graph
        reads it at its address on every replay (a fresh tensor per call would leave the graphs reading
        freed memory, seen as out-of-range indices on an H200)."""
        if not spec.suppressed:
            return None
        if spec.suppressed not in self.suppressed_ids:
            self.suppressed_ids[spec.suppressed] = torch.tensor(
                spec.suppressed, dtype=torch.long, device=self.device
            )
        return self.suppressed_ids[spec.suppressed]

    def _ensure_buffers(self, rows: int, length: int, max_new: int, kv) -> None:
        """Reuse the buffers (and graphs) when they are large enough; else allocate anew (positions
        rounded up to 64, so prompts of slightly different lengths share them)."""
        first = kv.layers[0].keys
        buf = self.buffers
        if (
            buf is not None
            and buf.rows >= rows
            and buf.length >= length
            and buf.max_new == max_new
            and buf.keys[0].dtype == first.dtype
        ):
            return
        # Free the old buffers and graphs first; the graphs' memory pool goes with them (a new capture
        # into the pool of freed graphs trips the caching allocator).
        self.buffers = self.graphs = self.caches = self.pool = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        length = -(-length // 64) * 64
        self.buffers = DecodeBuffers(
            rows, length, max_new, len(kv.layers), first.shape[1], first.shape[3], first.dtype, self.device
        )
        self.graphs, self.caches = {}, {}

    def _cache(self, bucket: int):
        if bucket not in self.caches:
            buf = self.buffers
            self.caches[bucket] = slot_cache(
                [k[:bucket] for k in buf.keys], [v[:bucket] for v in buf.values], buf.position
            )
        return self.caches[bucket]

    def _load_prompt(self, attention_mask, kv, deltas, first, first_logp, spec) -> None:
        buf, (rows, prompt_len) = self.buffers, attention_mask.shape
        buf.mask.fill_(float("-inf"))
        buf.mask[:rows, 0, 0, :prompt_len].masked_fill_(attention_mask.bool(), 0.0)
        for layer, (k, v) in enumerate(zip(buf.keys, buf.values, strict=True)):
            k[:rows, :, :prompt_len].copy_(kv.layers[layer].keys)
            v[:rows, :, :prompt_len].copy_(kv.layers[layer].values)
        buf.delta.zero_()
        if deltas is not None:
            # M-RoPE deltas count real tokens only (position = real tokens so far + delta); the decode
            # writes at cache index P + k, which also counts each row's left padding.
            padding = prompt_len - attention_mask.sum(dim=1)
            buf.delta[:rows] = deltas.reshape(-1).to(buf.delta) - padding.to(buf.delta)
        buf.out.fill_(spec.pad_id)
        buf.logp.zero_()
        buf.out[:rows, 0] = first
        buf.logp[:rows, 0] = first_logp
        buf.tokens[:rows] = first
        buf.finished.fill_(False)
        buf.finished[:rows] = first == spec.eos_id
        buf.position.fill_(prompt_len)
        buf.step.fill_(1)

    # -- one decode step ---------------------------------------------------------------------------------

    def _forcing(self, spec: SamplingSpec, rows: int, step: torch.Tensor) -> tuple:
        """``sample_from_logits``' (step, lengths) arguments for the first ``rows`` rows."""
        return (step, self.buffers.lengths[:rows]) if spec.forced_lengths else ()

    def _decode_step(self, bucket: int, spec: SamplingSpec, suppressed) -> None:
        """Feed each row's last token, write its keys/values, sample the next token. Shapes fixed by
        ``bucket``, every tensor a buffer or a temporary: capturable as a CUDA graph."""
        buf = self.buffers
        buf.mask[:bucket].index_fill_(3, buf.position, 0.0)
        positions = buf.position + buf.delta[:bucket]
        if self.mrope:  # Qwen-VL: text tokens carry the same position in all three M-RoPE sections
            position_ids = positions.view(1, bucket, 1).expand(3, bucket, 1)
        else:
            position_ids = positions.view(bucket, 1)
        with (
            decode_attention(self.language_model.config),
            fused_norms(self.norms if self.fuse_norms else []),
            fused_rotary(self.rotary_owners if self.fuse_rotary else [], self.rotary_swaps),
        ):
            hidden = self.forward(
                input_ids=buf.tokens[:bucket, None],
                attention_mask=buf.mask[:bucket],
                position_ids=position_ids,
                past_key_values=self._cache(bucket),
                use_cache=True,
            ).last_hidden_state
        ids, logp = sample_from_logits(
            self.lm_head(hidden[:, -1]), spec, suppressed, *self._forcing(spec, bucket, buf.step)
        )
        finished = buf.finished[:bucket]
        ids = torch.where(finished, torch.full_like(ids, spec.pad_id), ids)
        logp = torch.where(finished, torch.zeros_like(logp), logp)
        buf.out[:bucket].index_copy_(1, buf.step, ids[:, None])
        buf.logp[:bucket].index_copy_(1, buf.step, logp[:, None])
        finished |= ids == spec.eos_id
        buf.tokens[:bucket] = ids
        buf.position += 1
        buf.step += 1

    def _run_step(self, bucket, spec, suppressed, graph_key) -> None:
        if graph_key is None:
            self._decode_step(bucket, spec, suppressed)
        else:
            self.graphs[(*graph_key, bucket)].replay()

    def _ensure_graphs(self, spec: SamplingSpec, suppressed) -> tuple | None:
        """Capture one decode step per bucket for this sampling spec (and autocast state), once.

        Captured before the prompt is loaded: the warm-up steps that must precede a capture write into
        the buffers, which are filled afterwards.
        """
        if not self.use_graphs:
            return None
        autocast = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda") if autocast else None
        key = (
            spec.temperature, spec.forced_lengths, spec.eos_id, spec.pad_id, spec.suppressed, dtype,
            self.fuse_norms, self.fuse_rotary,
        )  # fmt: skip
        buckets = bucket_sizes(self.buffers.rows)
        if all((*key, b) in self.graphs for b in buckets):
            return key
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        # Autocast's weight-cast cache must be off while capturing (cached casts would be freed after).
        cast = (
            torch.autocast("cuda", dtype=dtype, cache_enabled=False) if autocast else contextlib.nullcontext()
        )
        buf = self.buffers
        with cast:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: lazy initialisations happen outside the capture
                for b in buckets:
                    buf.position.zero_()
                    buf.step.zero_()
                    self._decode_step(b, spec, suppressed)
            torch.cuda.current_stream().wait_stream(side)
            for b in buckets:
                buf.position.zero_()
                buf.step.zero_()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    self._decode_step(b, spec, suppressed)
                self.graphs[(*key, b)] = graph
        return key


def answer_lengths(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] sampled ids -> [B] tokens through the first end token (T where there is none)."""
    is_eos = ids == eos_id
    first = is_eos.int().argmax(dim=1)
    return torch.where(is_eos.any(dim=1), first + 1, torch.full_like(first, ids.shape[1]))
