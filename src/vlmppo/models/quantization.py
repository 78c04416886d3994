"""Quantised frozen bases (QLoRA): ``model.quantization: 4bit | 8bit`` through bitsandbytes.

What is quantised: the linear layers of the language model, which hold almost all the weights. The vision
tower and projector stay in the model dtype (they may be trained fully, and vision features lose more to
quantisation than the decoder does), and so do the output layer and the embeddings (the log-probs PPO's
ratio is made of come out of the output layer). LoRA adapters sit on the quantised linears and stay in
fp32/bf16; the value head is fp32. 4bit is NF4 with compute in the model dtype (bf16 on a GPU) and, by
default, double quantisation of the block constants.

Why sampling never uses a merged copy: ``W + BA`` of a quantised ``W`` is not representable in 4 bits
without re-quantising (and drifting) the base, so PPO samples from the adapter model itself
(``rl/startup.py: uses_merged_sampling``).

bitsandbytes needs a CUDA device for these layers; `check_quantization` says so before any work is done.
"""

from __future__ import annotations

import importlib.util

from vlmppo.errors import ModelError

EXTRA_HINT = "pip install 'vlmppo[quant]' (bitsandbytes)"

# Bytes per quantised weight: 4bit stores two weights a byte plus one fp32 constant per block of 64 (double
# quantisation: an 8-bit constant per block and one fp32 per 256 blocks); 8bit one byte plus a row's fp32
# scale (negligible at these widths).
BYTES_PER_WEIGHT = {
    ("4bit", False): 0.5 + 4 / 64,
    ("4bit", True): 0.5 + 1 / 64 + 4 / (64 * 256),
    ("8bit", False): 1.0,
    ("8bit", True): 1.0,
}


def bytes_per_quantized_weight(quantization: str, double_quant: bool) -> float:
    return BYTES_PER_WEIGHT[(quantization, double_quant)]


def check_quantization(model_cfg, device: str) -> None:
    """ModelError unless ``model.quantization`` can run here: a CUDA device and bitsandbytes installed.

    Called by `load_model` and at the start of SFT and PPO, before any file is written or weight read.
    """
    q = model_cfg.quantization
    if not q:
        return
    if not str(device).startswith("cuda"):
        raise ModelError(
            f"model.quantization={q} needs a CUDA GPU (bitsandbytes' quantised layers run there), but this "
            f"run's device is '{device}'.",
            hint="Run on a GPU machine, or set model.quantization=null (a plain LoRA model) on this one.",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.quantization={q} needs the bitsandbytes package, which is not installed.",
            hint=f"Install it ({EXTRA_HINT}), or set model.quantization=null.",
        )


def unquantized_modules(family) -> list[str]:
    """Module paths bitsandbytes must leave alone: the vision tower, the projector and the output layer.

    transformers matches these as prefixes (or name endings) of module names; giving the list replaces its
    default (the output layer), so the output layer is named here too.
    """
    return [family.vision_tower, family.projector, "lm_head"]


def quantized_linear_names(model, family) -> list[str]:
    """Names of the linear layers ``model`` (a plain, unquantised model, e.g. on the meta device) would have
    quantised: those of the language model (the output layer lies outside it)."""
    import torch

    prefix = family.language_model + "."
    return [n for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)]


def bnb_config(model_cfg, family, compute_dtype):
    """The transformers ``BitsAndBytesConfig`` of ``model.quantization``."""
    from transformers import BitsAndBytesConfig

    skip = unquantized_modules(family)
    if model_cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=model_cfg.double_quant,
        bnb_4bit_quant_storage="uint8",
        llm_int8_skip_modules=skip,
    )


def describe_quantization(model_cfg) -> str | None:
    """One line for plans and manifests, or None for an unquantised base."""
    q = model_cfg.quantization
    if not q:
        return None
    if q == "4bit":
        dq = ", double quantisation" if model_cfg.double_quant else ""
        return f"4bit NF4 base (bitsandbytes{dq}; bf16 compute), LoRA adapters and value head unquantised"
    return "8bit LLM.int8 base (bitsandbytes), LoRA adapters and value head unquantised"
