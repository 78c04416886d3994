"""Processor loading, with an image-only Qwen processor for machines without torchvision.

transformers 5.x builds Qwen2-VL/Qwen2.5-VL processors with a video processor that needs torchvision;
without it ``AutoProcessor.from_pretrained`` silently returns just the tokenizer. vlmppo never feeds
videos, so the image-only subclasses below drop the video part and are otherwise the stock classes. They
save themselves under the stock class name, plus the legacy ``preprocessor_config.json`` a stock processor
can build its video processor from, so a folder written here loads with the stock processor on a machine
that has torchvision.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from vlmppo.errors import ModelError

log = logging.getLogger(__name__)


class _ImageOnly:
    """Mixin: the stock Qwen processor without its video processor."""

    stock_name: str

    # ProcessorMixin reads the sub-processors off this signature: image processor and tokenizer only.
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["processor_class"] = self.stock_name
        return out

    def save_pretrained(self, save_directory, **kwargs):
        files = super().save_pretrained(save_directory, **kwargs)
        config = Path(save_directory, "tokenizer_config.json")
        if config.is_file():  # the tokenizer records the class that saved it; name the stock one
            data = json.loads(config.read_text())
            data["processor_class"] = self.stock_name
            config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        self.image_processor.save_pretrained(save_directory)
        return files


class Qwen2VLImageOnlyProcessor(_ImageOnly, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` for images and text only (no torchvision needed)."""

    stock_name = "Qwen2VLProcessor"


class Qwen25VLImageOnlyProcessor(_ImageOnly, Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` for images and text only (no torchvision needed)."""

    stock_name = "Qwen2_5_VLProcessor"


IMAGE_ONLY = {cls.stock_name: cls for cls in (Qwen2VLImageOnlyProcessor, Qwen25VLImageOnlyProcessor)}


def load_processor(path, family, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """The family's processor from a checkpoint folder or hub id.

    The stock processor (``AutoProcessor``) is used whenever it can be built; otherwise the family's
    image-only processor. Whatever comes back is checked to be a real processor (images + text), since
    ``AutoProcessor`` may return a bare tokenizer instead of failing.

    Raises:
        ModelError: Neither the stock nor a fallback processor could be built.
    """
    from transformers import AutoProcessor

    stock_error = None
    try:
        processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # e.g. ImportError: the video processor needs torchvision
        processor, stock_error = None, exc
    if isinstance(processor, ProcessorMixin) and hasattr(processor, "image_processor"):
        return processor
    got = (
        type(processor).__name__ if processor is not None else f"{type(stock_error).__name__}: {stock_error}"
    )
    fallback = family.image_only_processor_class()
    if fallback is None:
        raise ModelError(
            f"Could not build the {family.name} processor for '{path}' (AutoProcessor gave {got}).",
            hint="Check that the folder has the processor files (processor_config.json or "
            "preprocessor_config.json, tokenizer files).",
        )
    log.info("stock %s unavailable here (%s); using %s", family.processor_class, got, fallback.__name__)
    try:
        return fallback.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(
            f"Could not build the {family.name} processor for '{path}': the stock one gave {got}; "
            f"the image-only one gave {type(exc).__name__}: {exc}"
        ) from exc
