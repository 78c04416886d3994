"""Fewer kernels per decode step: the language model's RMSNorms as one fused kernel each while a decode step runs.

A decode step at 128 rows is a chain of small kernels (a 2B model: ~40 per layer), and once replayed from a CUDA
graph each still costs a few microseconds on the GPU however little it computes. ``transformers``' RMSNorm is
seven of them (cast up, square, mean, add, rsqrt, multiply, cast down, scale); ``torch.nn.functional.rms_norm``
computes the same normalisation in one (in fp32 inside, rounded once at the end instead of before the scale:
within one bf16 rounding of the stock module). Two norms per layer: ~340 fewer kernels per step on a 28-layer
model.

Only the decode step uses this (``StaticDecoder``, while it runs or captures a step); the prefill, the scoring
pass and the update run the stock modules, so the log-probs PPO uses are unchanged.
"""

from __future__ import annotations

import contextlib

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
        return F.rms_norm(hidden_states, (hidden_states.shape[-1],), module.weight, module.variance_epsilon)

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
