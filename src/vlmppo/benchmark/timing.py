"""Wall-clock timers around the policy's methods, and peak GPU memory per phase.

CUDA work is asynchronous: a timer that stops without ``torch.cuda.synchronize()`` measures the kernel
launches, not the kernels. Every timer here synchronises before reading the clock (a no-op on CPU).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

_MISSING = object()


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def now(device: str) -> float:
    sync(device)
    return time.perf_counter()


class MethodClock:
    """Seconds spent inside named methods of some objects, summed over calls.

    ``wrap(obj, "generate", key)`` shadows ``obj.generate`` with a timed instance attribute; ``restore``
    puts back what was there before, so the objects are left exactly as they were (nothing outside vlmppo.benchmark is
    patched, and the class's method is never replaced).
    """

    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.last_result: dict[str, object] = {}
        self._wrapped: list[tuple[object, str, object]] = []

    def wrap(self, obj, name: str, key: str) -> None:
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            start = now(self.device)
            result = method(*args, **kwargs)
            self.seconds[key] += now(self.device) - start
            self.last_result[key] = result
            return result

        previous = vars(obj).get(name, _MISSING)  # an instance attribute another wrapper set, if any
        object.__setattr__(obj, name, timed)  # nn.Module too: a plain attribute, found before the method
        self._wrapped.append((obj, name, previous))

    def reset(self) -> None:
        self.seconds.clear()

    def restore(self) -> None:
        for obj, name, previous in reversed(self._wrapped):
            if previous is _MISSING:
                object.__delattr__(obj, name)
            else:
                object.__setattr__(obj, name, previous)
        self._wrapped.clear()


@contextmanager
def timed_policy(policy, device: str):
    """Time ``policy.sample``, ``policy.score``, ``policy.prefill`` and the model's ``generate`` inside the
    block."""
    clock = MethodClock(device)
    clock.wrap(policy, "sample", "sample")
    clock.wrap(policy, "score", "score")
    if hasattr(policy, "prefill"):  # the prompts' forward the static decoder and scoring share
        clock.wrap(policy, "prefill", "prefill")
    # With ppo.merged_sampling the answers come from the merged copy; with model.decoder=static from its
    # StaticDecoder instead of transformers' generate (one of the two runs per row, both count as generate).
    from vlmppo.models.generation import static_decoder_for

    sampler = getattr(policy, "sampler", None)
    model = sampler.model if sampler is not None else policy.loaded.model
    clock.wrap(model, "generate", "generate")
    for compiled in (False, True):
        clock.wrap(static_decoder_for(model, compile=compiled), "generate", "generate")
    try:
        yield clock
    finally:
        clock.restore()


def reset_peak_memory(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: str) -> float | None:
    """``torch.cuda.max_memory_allocated`` since the last reset, in GiB; None on CPU (not measured)."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**30
