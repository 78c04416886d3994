"""The decode floor: the least time a decode step can take, from the bytes it must read.

One decode step of a batch reads every weight of the language model once and every row's keys/values
once; at batch sizes that fit a GPU it does far less arithmetic than the card offers, so memory bandwidth
sets the floor. ``vlmppo bench`` reports measured ms per step beside it.
"""

from __future__ import annotations

# Vendors' datasheet memory bandwidth (bytes/s) by a substring of torch.cuda.get_device_name().
HBM_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12}


def hbm_bandwidth(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    return next((bw for key, bw in HBM_BANDWIDTH.items() if key in gpu_name), None)


def decode_bytes_per_step(model, rows: int, cached_tokens: float) -> float:
    """Bytes one decode step must read: the language model's weights and output layer, and the
    keys/values of ``cached_tokens`` positions for each of ``rows`` rows."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    language = inner.model.language_model
    head = inner.get_output_embeddings()
    # The embedding table is only gathered from (a few rows); the output layer is read whole.
    embedding = language.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in language.parameters() if p is not embedding)
    weights += head.weight.numel() * head.weight.element_size()
    text = language.config
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    element = next(language.parameters()).element_size()
    kv_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * element
    return weights + rows * cached_tokens * kv_per_token


def decode_floor_ms(model, rows: int, cached_tokens: float, gpu_name: str | None) -> float | None:
    """Milliseconds per decode step at the card's bandwidth; None where it is not known (CPU)."""
    bandwidth = hbm_bandwidth(gpu_name)
    if bandwidth is None:
        return None
    return decode_bytes_per_step(model, rows, cached_tokens) / bandwidth * 1e3
