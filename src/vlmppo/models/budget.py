"""The prompt budget of ``env.history``: how many tokens a step's input takes with K earlier turns.

Each earlier turn adds a frame (hundreds of image tokens for a real model: LLaVA-1.5 576, Qwen2-VL 300 px
≈ 100) and an answer of up to ``max_new_tokens``. The budget is measured with the model's own processor and
chat template on a real frame and the task's prompt (K turns of empty answers, then ``max_new_tokens`` per
answer added as the worst case), and compared with the model's context (``max_position_embeddings``), so a
history that cannot fit is one clear error before any work starts (``--dry-run`` shows the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmppo.errors import ConfigError
from vlmppo.models.inputs import Turn, chat_prompt, to_pil


@dataclass(frozen=True)
class PromptBudget:
    """Token counts of one step's input at ``history`` earlier turns.

    Attributes:
        history: K, the earlier turns.
        image_tokens: Tokens of one frame.
        text_tokens: Template and task text, without answers (at K turns).
        turn_tokens: What one more earlier turn adds: its frame, its template, an answer of the longest length.
        answer_tokens: The longest answer (``max_new_tokens``).
        context: The model's context length (``max_position_embeddings``), None when the config has none.
        estimated: The counts come from the model's config and the families' resizing rules
            (``vlmppo.memory.estimate_prompt_budget``), not from its processor.
    """

    history: int
    image_tokens: int
    text_tokens: int
    turn_tokens: int
    answer_tokens: int
    context: int | None
    estimated: bool = False

    @property
    def images(self) -> int:
        return self.history + 1

    @property
    def total(self) -> int:
        """The longest input: K + 1 frames, the texts, K earlier answers and the new one at full length."""
        return self.images * self.image_tokens + self.text_tokens + (self.history + 1) * self.answer_tokens

    @property
    def fits(self) -> bool:
        return self.context is None or self.total <= self.context

    def most_turns(self) -> int | None:
        """The largest K whose input fits the context (None without a known context)."""
        if self.context is None:
            return None
        without = self.total - self.history * self.turn_tokens
        return max(0, (self.context - without) // self.turn_tokens) if self.turn_tokens else self.history

    def parts(self) -> str:
        return (
            f"{self.images} frame(s) x {self.image_tokens} image tokens + {self.text_tokens} text tokens + "
            f"{self.history + 1} answer(s) x {self.answer_tokens}"
        )

    def describe(self) -> str:
        """The dry-run's line: ``1234 of 4096 tokens (2 frame(s) x 576 image tokens + ...)``."""
        context = f"of {self.context} " if self.context is not None else ""
        unknown = "" if self.context is not None else "; the model's context length is unknown"
        how = "; estimated: the processor is not available offline" if self.estimated else ""
        return f"{self.total} {context}tokens ({self.parts()}{unknown}{how})"

    def check(self, model_path: str, max_new_tokens_key: str) -> None:
        """ConfigError, naming the settings to change, when the longest input is longer than the context."""
        if self.fits:
            return
        raise ConfigError(
            f"env.history={self.history} does not fit {model_path}: a step's input can reach {self.total} tokens "
            f"({self.parts()}), more than the model's context of {self.context} tokens.",
            hint=f"Use env.history={self.most_turns()} or less, a lower {max_new_tokens_key}, or fewer image "
            "tokens per frame (model.max_pixels, for the families that resize frames).",
        )


def context_length(config) -> int | None:
    """``max_position_embeddings`` of the language model (None when absent)."""
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


def _image_token_id(config) -> int | None:
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def prompt_budget(loaded, frame, prompt_text: str, history: int, max_new_tokens: int) -> PromptBudget:
    """Measure the input of a step at ``history`` earlier turns with ``loaded``'s processor (``loaded``: a
    ``LoadedModel`` or anything with ``processor`` and ``model.config`` or ``config``).

    Args:
        frame: A frame of the task (``[H, W, 3]`` uint8 or PIL); every turn shows one of its size.
        prompt_text: The task text of that frame.
        history: K.
        max_new_tokens: The longest answer.
    """
    config = loaded.config if hasattr(loaded, "config") else loaded.model.config
    image_id = _image_token_id(config)
    image = to_pil(frame)

    def measure(turns: int) -> tuple[int, int]:
        past = [Turn(image, "")] * turns
        text = chat_prompt(loaded, prompt_text, history=past)
        ids = loaded.processor(images=[image] * (turns + 1), text=[text], return_tensors="pt")["input_ids"][0]
        images = int((ids == image_id).sum()) if image_id is not None else 0
        return len(ids), images

    length, images = measure(history)
    one_image = images // (history + 1)
    turn = measure(1)[0] - measure(0)[0] + max_new_tokens
    return PromptBudget(
        history=history,
        image_tokens=one_image,
        text_tokens=length - images,
        turn_tokens=turn,
        answer_tokens=max_new_tokens,
        context=context_length(config),
    )


def config_prompt_budget(cfg, max_new_tokens: int, loaded=None) -> PromptBudget | None:
    """The budget of ``cfg``'s steps (``env`` section, ``env.history``), measured on the first frame of its
    env (seeded ``run.seed``); with ``loaded``, its processor, else the one of ``model.path`` when it is
    available offline (a folder, ``tiny:``, a complete Hub cache snapshot). None when it is not."""
    from types import SimpleNamespace

    from vlmppo.envs import adapter_from_config, make_env_from_config

    if loaded is None:
        loaded = _offline_processor(cfg.model)
        if loaded is None:
            return None
    env = make_env_from_config(cfg.env)
    try:
        frame, info = env.reset(seed=cfg.run.seed)
    finally:
        env.close()
    prompt = adapter_from_config(cfg.env).prompt(info)
    if not hasattr(loaded, "config"):
        loaded = SimpleNamespace(processor=loaded.processor, config=loaded.model.config)
    return prompt_budget(loaded, frame, prompt, cfg.env.history, max_new_tokens)


def _offline_processor(model_cfg):
    """``processor`` and ``config`` of ``model.path`` without downloading anything, or None."""
    from pathlib import Path
    from types import SimpleNamespace

    from vlmppo.models.hub import cached_snapshot
    from vlmppo.models.loading import detect_family, load_model_config
    from vlmppo.models.processors import load_processor
    from vlmppo.models.tiny import resolve_model_path

    path = model_cfg.path
    source = resolve_model_path(path) if path.startswith("tiny:") or Path(path).is_dir() else None
    if source is None:
        source = cached_snapshot(path)
    config = load_model_config(model_cfg)
    if source is None or config is None:
        return None
    family = detect_family(source, model_cfg.family, trust_remote_code=model_cfg.trust_remote_code)
    processor = load_processor(source, family, trust_remote_code=model_cfg.trust_remote_code)
    family.set_pixel_budget(processor.image_processor, model_cfg.min_pixels, model_cfg.max_pixels)
    return SimpleNamespace(processor=processor, config=config)
