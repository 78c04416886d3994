"""``model_info``: what a checkpoint is and costs, without loading its weights."""

from __future__ import annotations

from vlmppo.models.hub import locate_hub_model
from vlmppo.models.tiny import resolve_model_path


def model_info(path: str, image_size: int = 300) -> dict:
    """Family, parameter counts and image-token count of the model at `path`.

    The model is built on the meta device (no weights are read or allocated), so this is cheap even for
    a 7B checkpoint; the image-token count comes from running the processor on a blank square image.

    Args:
        path: ``tiny:<family>``, a checkpoint folder, or a hub id.
        image_size: Side in pixels of the square image whose token count is reported.

    Returns:
        ``{"path", "family", "model_type", "total_params", "trainable_params_lora", "lora",
        "image_size", "image_tokens"}``; trainable parameters are those of the default LoRA settings
        (``LoraConfig()``).
    """
    resolved = resolve_model_path(path)
    if isinstance(resolved, str):  # a hub id: its cached snapshot, or one clear error when it cannot come
        resolved = locate_hub_model(resolved)

    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmppo.config.schema import LoraConfig
    from vlmppo.models.inputs import build_inputs
    from vlmppo.models.loading import LoadedModel, apply_lora, detect_family
    from vlmppo.models.processors import load_processor

    config = AutoConfig.from_pretrained(str(resolved))
    family = detect_family(resolved)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    lora = LoraConfig()
    peft_model = apply_lora(model, family, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)

    processor = load_processor(resolved, family)
    loaded = LoadedModel(
        model=None, processor=processor, tokenizer=processor.tokenizer, family=family, path=resolved
    )
    image = Image.new("RGB", (image_size, image_size))
    input_ids = build_inputs(loaded, [image], [""])["input_ids"]  # [1, T]
    image_tokens = int((input_ids == processor.image_token_id).sum())
    return {
        "path": str(resolved),
        "family": family.name,
        "model_type": config.model_type,
        "total_params": total,
        "trainable_params_lora": trainable,
        "lora": {"r": lora.r, "alpha": lora.alpha, "target_modules": lora.target_modules},
        "image_size": image_size,
        "image_tokens": image_tokens,
    }
