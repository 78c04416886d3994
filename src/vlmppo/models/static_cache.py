"""The static decoder's parts that hold no decoding logic: the buffers every decode step reads and writes,
the ``transformers`` cache over them, and the grouped-query attention of one new token per row.

See ``models/static_decode.py`` for how a decode step uses them.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

ATTENTION_NAME = "vlmppo_grouped_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention for one new token per row without copying keys/values for every query head.

    With grouped-query attention (``h`` query heads sharing ``kv`` key/value heads) and a mask,
    ``transformers``' SDPA path repeats keys and values ``h / kv`` times: at batch 128 that is several
    GB moved per step. The ``h / kv`` query heads of a group can instead be read as that many query
    *positions* of one head: ``[b, kv, h/kv, d]`` against ``[b, kv, L, d]``, the same mask for each.
    Anything else (prefill, no grouping) goes to the stock SDPA function.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads == kv_heads:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.reshape(b, kv_heads, heads // kv_heads, dim)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, grouped_decode_attention)


@contextlib.contextmanager
def decode_attention(config):
    """Use ``grouped_decode_attention`` in the layers that read ``config`` (the text config) meanwhile."""
    _register_attention()
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = previous


def slot_cache(keys: list[torch.Tensor], values: list[torch.Tensor], position: torch.Tensor):
    """A ``transformers`` cache over fixed buffers: layer i writes the new token's keys/values at
    ``position`` ([1] int64, on the device) into ``keys[i]``/``values[i]`` ``[b, kv, L, d]`` and attends
    over all L (the mask hides what is not written yet)."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class SlotLayer(CacheLayerMixin):
        is_compileable = True
        is_sliding = False

        def __init__(self, k, v):
            super().__init__()
            self.keys, self.values, self.is_initialized = k, v, True

        def lazy_initialization(self, key_states, value_states) -> None:  # buffers exist already
            pass

        def update(self, key_states, value_states, *args, **kwargs):
            # Under bf16 autocast with fp32 weights the keys come out of the rotary embedding in fp32 and the
            # values in bf16; the buffers take the prefill's key dtype (attention casts both back under autocast).
            self.keys.index_copy_(2, position, key_states.to(self.keys.dtype))
            self.values.index_copy_(2, position, value_states.to(self.values.dtype))
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.keys.shape[-2], 0

        def get_seq_length(self) -> int:
            return self.keys.shape[-2]

        def get_max_length(self) -> int:
            return self.keys.shape[-2]

    return Cache(layers=[SlotLayer(k, v) for k, v in zip(keys, values, strict=True)])


class DecodeBuffers:
    """Every tensor a decode step reads or writes, allocated once for ``rows`` x ``length`` positions.

    Attributes:
        keys, values: per layer ``[rows, kv_heads, length, head_dim]`` (model dtype).
        mask: ``[rows, 1, 1, length]`` additive attention mask (0 = attend, -inf = not), model dtype.
        tokens: ``[rows]`` the token each row feeds next.
        delta: ``[rows]`` position offset of each row (M-RoPE delta; 0 for plain RoPE).
        finished: ``[rows]`` bool, the row has emitted its end token (or is padding).
        out: ``[rows, max_new]`` sampled ids, pad after the end token.
        logp: ``[rows, max_new]`` fp32 log-prob of each sampled id under the distribution sampled from.
        lengths: ``[rows]`` forced answer lengths (``SamplingSpec.forced_lengths``; benchmarks).
        position: ``[1]`` the cache position being written; step: ``[1]`` index into ``out``.
    """

    def __init__(self, rows, length, max_new, layers, kv_heads, head_dim, dtype, device):
        def zeros(*shape, dtype=dtype):
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.rows, self.length, self.max_new = rows, length, max_new
        self.keys = [zeros(rows, kv_heads, length, head_dim) for _ in range(layers)]
        self.values = [zeros(rows, kv_heads, length, head_dim) for _ in range(layers)]
        self.mask = zeros(rows, 1, 1, length)
        self.tokens = zeros(rows, dtype=torch.long)
        self.delta = zeros(rows, dtype=torch.long)
        self.finished = zeros(rows, dtype=torch.bool)
        self.out = zeros(rows, max_new, dtype=torch.long)
        self.logp = zeros(rows, max_new, dtype=torch.float32)
        self.lengths = torch.full((rows,), max_new, dtype=torch.long, device=device)
        self.position = zeros(1, dtype=torch.long)
        self.step = zeros(1, dtype=torch.long)

    def per_row(self) -> list[torch.Tensor]:
        """The buffers indexed by row (moved together when rows are compacted)."""
        return [
            *self.keys, *self.values, self.mask, self.tokens, self.delta, self.finished, self.out, self.logp,
            self.lengths,
        ]  # fmt: skip

    def keep_rows(self, slots: torch.Tensor, bucket: int) -> None:
        """Move rows ``slots`` (in this order) to the front; rows after them up to ``bucket`` become
        finished padding rows."""
        n = len(slots)
        for buf in self.per_row():
            buf[:n] = buf.index_select(0, slots)
        self.pad_rows(n, bucket)

    def pad_rows(self, start: int, stop: int) -> None:
        """Rows ``start:stop`` take part in the bucket's steps but produce nothing: finished, and attending
        to position 0 only (an all-masked row would compute NaNs, harmless but noisy)."""
        if stop <= start:
            return
        self.finished[start:stop] = True
        self.mask[start:stop] = float("-inf")
        self.mask[start:stop, ..., 0] = 0.0
