"""Fewer kernels per decode step: fused RMSNorms and a one-kernel rotary embedding while a decode step runs.

A decode step at 128 rows is a chain of small kernels (a 2B model: ~40 per layer), and once replayed from a CUDA
graph each still costs a few microseconds on the GPU however little it computes. ``transformers``' RMSNorm is
seven of them (cast up, square, mean, add, rsqrt, multiply, cast down, scale); ``torch.nn.functional.rms_norm``
computes the same normalisation in one (in fp32 inside, rounded once at the end instead of before the scale:
within one bf16 rounding of the stock module). Two norms per layer: ~340 fewer kernels per step on a 28-layer
model.

The rotary embedding of one new token per row is ``q·cos + rotate_half(q)·sin``: five kernels for the queries
and five for the keys in every layer. For that token it is a linear map per row, ``q @ R`` with ``R = diag(cos)
+ P·sin`` (``P`` the signed half-swap), built once per step and applied by one batched matmul per tensor (fp32
accumulation of the two non-zero products, rounded once): ~220 fewer kernels per step on 28 layers.

Only the decode step uses this (``StaticDecoder``, while it runs or captures a step); the prefill, the scoring
pass and the update run the stock modules, so the log-probs PPO uses are unchanged.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F

# transformers' RMSNorms that compute exactly ``weight * (x / sqrt(mean(x²) + eps))`` (others, e.g. Gemma's
# ``1 + weight``, keep their own forward).
PLAIN_RMS_NORMS = frozenset(
    {"Qwen2RMSNorm", "Qwen2VLRMSNorm", "Qwen2_5_VLRMSNorm", "LlamaRMSNorm", "MistralRMSNorm"}
)


def _fused_forward(module, stock):
    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.dtype != module.weight.dtype:  # the stock module's dtype promotion
            return stock(hidden_states)
        # Outside autocast, which may list rms_norm as an fp32 op (casts in and out: kernels again); the fused
        # kernel accumulates in fp32 on its own.
        with torch.autocast(hidden_states.device.type, enabled=False):
            return F.rms_norm(
                hidden_states, (hidden_states.shape[-1],), module.weight, module.variance_epsilon
            )

    return forward


def plain_norms(language_model) -> list:
    """The modules of ``language_model`` that ``fused_norms`` swaps."""
    return [m for m in language_model.modules() if type(m).__name__ in PLAIN_RMS_NORMS]


@contextlib.contextmanager
def fused_norms(norms: list):
    """During the block, the ``norms`` (from ``plain_norms``) run ``F.rms_norm`` (instance attributes, removed
    afterwards: the modules are left exactly as they were)."""
    swapped = []
    for module in norms:
        if "forward" not in vars(module):
            module.forward = _fused_forward(module, module.forward)
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward


def rotary_modules(language_model) -> list:
    """The ``transformers`` modeling modules whose ``apply_rotary_pos_emb`` the attention layers call."""
    found = []
    for module in language_model.modules():
        owner = sys.modules.get(type(module).__module__)
        if type(module).__name__.endswith("Attention") and hasattr(owner, "apply_rotary_pos_emb"):
            if owner not in found:
                found.append(owner)
    return found


def half_swap(dim: int, device, dtype) -> torch.Tensor:
    """``P`` [dim, dim]: ``x @ P == rotate_half(x) == cat(-x[d/2:], x[:d/2])``."""
    half = dim // 2
    swap = torch.zeros(dim, dim, device=device, dtype=dtype)
    index = torch.arange(half, device=device)
    swap[index + half, index] = -1.0  # output j < d/2 takes -x[j + d/2]
    swap[index, index + half] = 1.0  # output j >= d/2 takes x[j - d/2]
    return swap


def _rotation_forward(stock, swaps: dict):
    """``apply_rotary_pos_emb`` for one new token per row as a matmul with the step's rotation matrices.
    ``swaps``: ``half_swap`` matrices by (dim, device, dtype), made outside any CUDA-graph capture when
    possible (``fused_rotary``'s caller keeps them)."""
    made: dict = {}

    def apply(q, k, cos, sin, unsqueeze_dim=1):
        if (
            q.shape[2] != 1 or k.shape[2] != 1 or unsqueeze_dim != 1 or cos.dim() != 3 or cos.shape[1] != 1
            or not q.dtype == k.dtype == cos.dtype  # mixed (fp32 weights under autocast): the stock promotion
        ):  # fmt: skip
            return stock(q, k, cos, sin, unsqueeze_dim)
        if made.get("cos") is not cos or made.get("sin") is not sin:  # once per step (every layer's cos)
            key = (cos.shape[-1], str(cos.device), cos.dtype)
            if key not in swaps:
                swaps[key] = half_swap(cos.shape[-1], cos.device, cos.dtype)
            swap = swaps[key]
            rows = cos[:, 0]  # [b, d]
            made.update(cos=cos, sin=sin, rotation=torch.diag_embed(rows) + swap * sin[:, 0, None, :])
        rotation = made["rotation"]
        b, d = q.shape[0], q.shape[-1]
        q_embed = torch.bmm(q.reshape(b, -1, d), rotation).view(q.shape)
        k_embed = torch.bmm(k.reshape(b, -1, d), rotation).view(k.shape)
        return q_embed, k_embed

    return apply


@contextlib.contextmanager
def fused_rotary(owners: list, swaps: dict | None = None):
    """During the block, ``apply_rotary_pos_emb`` of the ``owners`` (``rotary_modules``) rotates one new token
    per row by a matmul; anything else (a prefill) goes to the stock function. ``swaps``: a dict kept by the
    caller between blocks, for the constant ``half_swap`` matrices."""
    swaps = {} if swaps is None else swaps
    saved = [(owner, owner.apply_rotary_pos_emb) for owner in owners]
    for owner, stock in saved:
        owner.apply_rotary_pos_emb = _rotation_forward(stock, swaps)
    try:
        yield
    finally:
        for owner, stock in saved:
            owner.apply_rotary_pos_emb = stock
