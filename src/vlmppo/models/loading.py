"""``load_model``: one code path for real checkpoints and tiny models (dtype, attention, LoRA, checkpointing)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmppo.errors import ModelError
from vlmppo.models.adapter import FamilyAdapter
from vlmppo.models.end_of_turn import align_eos_with_template
from vlmppo.models.hub import locate_hub_model
from vlmppo.models.processors import load_processor
from vlmppo.models.quantization import bnb_config, check_quantization
from vlmppo.models.tiny import built_size, check_supported, resolve_model_path

if TYPE_CHECKING:
    import torch

    from vlmppo.config.schema import LoraConfig, ModelConfig


@dataclass
class LoadedModel:
    """A model ready to use, with what it needs to read inputs.

    Attributes:
        model: A ``PeftModel`` when LoRA is configured and the model is loaded for training, else the
            transformers model (``*ForConditionalGeneration``).
        processor: Images + text -> model inputs (a transformers ``ProcessorMixin``).
        tokenizer: The processor's tokenizer (left padding).
        family: The family adapter.
        path: What was loaded: a local folder, or a hub id.
        image_device: Where ``build_inputs`` runs the image processor: None on the host (the default), or
            a CUDA device for a torchvision image processor (``models.inputs.process_images_on``); every
            input built for this model then has the same pixels, the rollout's and the update's alike.
        frame_device: Where ``build_inputs`` keeps processed frames between calls and assembles a batch's
            pixels (``models/frame_cache.py``): None on the host; the model's GPU in PPO (``build_policy``),
            so the same values need no host copy or transfer each step.
    """

    model: Any
    processor: Any
    tokenizer: Any
    family: FamilyAdapter
    path: Any
    image_device: Any = None
    frame_device: Any = None


def resolve_dtype(name: str, device: torch.device):
    """``auto`` is bf16 on CUDA and fp32 elsewhere; other names map to the torch dtype."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)  # "float32" | "bfloat16" | "float16" (the schema allows no others)


def check_attention(name: str, device: torch.device) -> str:
    """The attention implementation to request; ModelError if flash-attention can't be used here."""
    if name == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package, which is not installed.",
                hint="Install flash-attn on the GPU machine, or use model.attn_implementation=sdpa.",
            )
        if device.type != "cuda":
            raise ModelError(
                "model.attn_implementation=flash_attention_2 needs a CUDA device.",
                hint="Use model.attn_implementation=sdpa on CPU.",
            )
    return name


def detect_family(path, expected: str | None = None, *, trust_remote_code: bool = False) -> FamilyAdapter:
    """The family of the checkpoint at `path` (from its config); ModelError if it isn't `expected`."""
    from transformers import PretrainedConfig

    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # hub id that is unreachable, gated, or not a model
        raise ModelError(
            f"Could not read the config of model '{path}': {exc}",
            hint="Check the path or hub id (and network/HF_TOKEN for hub models).",
        ) from exc
    adapter = check_supported(config_dict.get("model_type"), str(path))
    if expected is not None and adapter.name != expected:
        raise ModelError(
            f"Model '{path}' is a {adapter.name} model but model.family is '{expected}'.",
            hint=f"Set model.family={adapter.name}, or point model.path at a {expected} checkpoint.",
        )
    return adapter


def lora_target_regex(model, family: FamilyAdapter, targets: list[str] | str) -> str:
    """A peft ``target_modules`` regex limited to linear layers of the language model.

    ``all-linear`` becomes every linear layer name found under the language model (peft's own
    ``all-linear`` would also adapt the vision tower); a list is taken as name (or regex) parts.

    Raises:
        ModelError: No module of the language model matches the given names.
    """
    import torch

    prefix = family.language_model + "."
    linear = sorted(
        {
            n.rsplit(".", 1)[1]
            for n, m in model.named_modules()
            if n.startswith(prefix) and isinstance(m, torch.nn.Linear)
        }
    )
    parts = linear if targets == "all-linear" else list(targets)
    regex = rf"{re.escape(family.language_model)}\..*\.({'|'.join(parts)})"
    if not any(re.fullmatch(regex, name) for name, _ in model.named_modules()):
        raise ModelError(
            f"model.lora.target_modules {targets} matches no module of the language model.",
            hint=f"Linear layers there: {', '.join(linear)}.",
        )
    return regex


def fully_trained_modules(model, family: FamilyAdapter, vision_tower: bool, projector: bool) -> list[str]:
    """Module names peft should train fully and save with the adapter (``modules_to_save``).

    When the projector sits inside the vision tower (Qwen's ``visual.merger``) and only one of the two is
    trained, the tower is split into its children (module lists into their items, since peft's wrapper
    can't be iterated); modules without parameters are skipped.
    """
    tower, proj = family.vision_tower, family.projector
    nested = proj.startswith(tower + ".")
    if vision_tower and projector:
        return [tower] if nested else [tower, proj]
    if projector:
        return [proj]
    if not vision_tower:
        return []
    if not nested:
        return [tower]
    import torch

    names = []
    for name, child in model.get_submodule(tower).named_children():
        full = f"{tower}.{name}"
        if full == proj or next(child.parameters(), None) is None:
            continue
        if isinstance(child, torch.nn.ModuleList):
            names.extend(f"{full}.{i}" for i in range(len(child)))
        else:
            names.append(full)
    return names


def apply_lora(model, family: FamilyAdapter, lora: LoraConfig):
    """Wrap `model` in a peft LoRA model: LoRA on the language model, optional fully trained parts."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(model, family, lora.target_modules),
        modules_to_save=fully_trained_modules(model, family, lora.train_vision_tower, lora.train_projector)
        or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def load_model(
    cfg: ModelConfig, *, device: str | torch.device = "cpu", for_training: bool = True
) -> LoadedModel:
    """Load the model, processor and tokenizer that `cfg` describes.

    Args:
        cfg: The ``model`` config section (family, path, dtype, attention, LoRA, checkpointing, pixels,
            quantisation: a quantised base loads straight onto `device`, LoRA on top as usual).
        device: Where the weights go.
        for_training: Wrap in LoRA (when ``cfg.lora`` is set) or make every weight trainable (when
            it is null), and turn on gradient checkpointing if asked. Otherwise every weight is frozen.

    Returns:
        A `LoadedModel`; the model is in eval mode (callers switch to train mode for updates).

    Raises:
        ModelError: Bad path, unsupported or mismatched family, flash-attention unavailable, quantisation
            asked for without a CUDA device or bitsandbytes, LoRA
            targets that match nothing, or a checkpoint transformers can't load.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    device = torch.device(device)
    check_quantization(cfg, device.type)  # before the (possibly long) build or download
    path = resolve_model_path(cfg.path)
    # A hub id loads from its cached snapshot when complete; LoadedModel.path keeps the id (checkpoints record it).
    source = locate_hub_model(path) if isinstance(path, str) else path
    family = detect_family(source, cfg.family, trust_remote_code=cfg.trust_remote_code)
    attn = check_attention(cfg.attn_implementation, device)
    processor = load_processor(source, family, trust_remote_code=cfg.trust_remote_code)
    align_eos_with_template(processor)
    family.set_pixel_budget(processor.image_processor, cfg.min_pixels, cfg.max_pixels)
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # batched generation
    dtype = resolve_dtype(cfg.dtype, device)
    quantized = {}
    if cfg.quantization:
        # bitsandbytes quantises while the weights are placed, so they are placed by from_pretrained itself.
        place = str(device)
        if device.type == "cuda":
            place = device.index if device.index is not None else torch.cuda.current_device()
        quantized = dict(quantization_config=bnb_config(cfg, family, dtype), device_map={"": place})
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            str(source),
            dtype=dtype,
            attn_implementation=attn,
            trust_remote_code=cfg.trust_remote_code,
            **quantized,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the weights of '{path}': {exc}") from exc
    if not cfg.quantization:  # a quantised model is on its device already (and refuses a dtype move)
        model.to(device)
    family.speed_up(model)
    model.eval()
    if not for_training:
        model.requires_grad_(False)
    elif cfg.lora is None:
        model.requires_grad_(True)
    if for_training and cfg.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and needs no input-grad hooks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if for_training and cfg.lora is not None:
        model = apply_lora(model, family, cfg.lora)
    return LoadedModel(model=model, processor=processor, tokenizer=tokenizer, family=family, path=path)


def load_model_config(model_cfg: ModelConfig):
    """The transformers config of ``model.path`` without downloading: a local folder (or ``tiny:``/``small:``),
    the Hugging Face cache, or a released architecture vlmppo knows by its Hub id. None if none of these."""
    from transformers import AutoConfig

    path = model_cfg.path
    try:
        if built_size(path) is not None:
            return AutoConfig.from_pretrained(str(resolve_model_path(path)))
        return AutoConfig.from_pretrained(
            path, local_files_only=True, trust_remote_code=model_cfg.trust_remote_code
        )
    except (OSError, ValueError):
        pass
    from vlmppo.models.shapes import shape_for_hub_id

    shape = shape_for_hub_id(path)
    return None if shape is None else shape.config()
