"""Sampling from a merged copy of a LoRA model: the same policy, half the decode time on a GPU.

Generating through an unmerged adapter runs every adapted linear layer as ``W x + B (A x)`` (plus a cast of
``x`` to the adapter's fp32): five more kernels per layer at every decode step, and decoding is bound by
kernel launches. On an H100 that took a Qwen2-VL-2B-shaped model from 19 to 42 ms per decode step
(bench/RESULTS.md). Sampling instead from a plain copy whose weights are ``W + ΔW`` removes that cost.

The copy is refreshed from the training model after each update, recomputing ``W + ΔW`` from the untouched
base weights every time (merging and un-merging in place in bf16 would drift the base weights a little at
each update). The scoring pass still runs the training model, so the old log-probs the PPO ratio uses are
those of exactly the model being trained; the copy only decides which tokens are sampled, and differs from
it by bf16 rounding. Costs one more copy of the weights in memory.
"""

from __future__ import annotations

import copy

import torch

PEFT_PREFIX = "base_model.model."


class MergedSampler:
    """A frozen, merged copy of a PEFT model for ``generate``; ``refresh`` after the adapter changed."""

    def __init__(self, peft_model):
        self.model = copy.deepcopy(peft_model).merge_and_unload()
        self.model.requires_grad_(False)
        self.model.eval()
        self.modules = dict(self.model.named_modules())
        self.stale = False

    @torch.no_grad()
    def refresh(self, peft_model) -> None:
        """Copy ``W + ΔW`` of every adapted layer (and the fully trained modules) from ``peft_model``."""
        from peft.tuners.lora import LoraLayer
        from peft.utils import ModulesToSaveWrapper

        for name, module in peft_model.named_modules():
            target = self.modules.get(name.removeprefix(PEFT_PREFIX))
            if isinstance(module, LoraLayer) and target is not None:
                base = module.get_base_layer().weight
                merged = base.float()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        merged = merged + module.get_delta_weight(adapter).float()
                target.weight.copy_(merged.to(target.weight.dtype))
            elif isinstance(module, ModulesToSaveWrapper) and target is not None:
                target.load_state_dict(module.modules_to_save[module.active_adapter].state_dict())
        self.stale = False
