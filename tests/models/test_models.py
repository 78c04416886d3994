"""Loading, forward, batched generation, LoRA training and adapter round trip, for every family."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmppo.config.schema import LoraConfig, ModelConfig
from vlmppo.errors import ModelError
from vlmppo.models import build_inputs, chat_prompt, load_model, model_info
from vlmppo.models.generation import explicit_generation_config, generate_ids

PROMPTS = [
    "Which way?",
    "The target number is 7 and the current number is 3. Should I add or subtract one? Answer in json.",
    "You see a grid with a door and a key. What next?",
]
ANSWERS = ['{"thoughts": "7 > 3", "action": "+"}', '{"action": "left"}', "toggle"]


def images(sizes=((64, 64), (96, 72), (56, 112))):
    colours = [(200, 30, 30), (30, 30, 200), (30, 200, 30)]
    return [Image.new("RGB", size, colour) for size, colour in zip(sizes, colours, strict=True)]


def lora_cfg(family, folder, **lora):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, **lora}
    return ModelConfig(family=family, path=str(folder), lora=LoraConfig(**lora), gradient_checkpointing=True)


def test_tiny_model_reloads_by_path_through_load_model(frozen_models, tiny_dirs, family):
    from transformers.processing_utils import ProcessorMixin

    loaded = frozen_models[family]
    assert loaded.family.name == family and loaded.path == tiny_dirs[family]
    assert type(loaded.model).__name__.endswith("ForConditionalGeneration")
    assert isinstance(loaded.processor, ProcessorMixin) and loaded.tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.dtype == torch.float32  # dtype auto on CPU


def test_chat_prompt_puts_the_image_before_the_text_and_ends_with_the_generation_prompt(
    frozen_models, family
):
    loaded = frozen_models[family]
    text = chat_prompt(loaded, "Go left?")
    image_token = loaded.processor.image_token
    assert text.count(image_token) == 1 and text.index(image_token) < text.index("Go left?")
    full = loaded.processor.apply_chat_template(
        [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Go left?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ANSWER"}]},
        ],
        tokenize=False,
    )
    assert full.startswith(text.rstrip()) and "ANSWER" in full[len(text.rstrip()) :]


def test_forward_with_an_image_gives_logits_that_depend_on_the_image(frozen_models, family):
    loaded = frozen_models[family]
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    batch = build_inputs(loaded, [red, blue], ["What colour?"] * 2)
    assert set(loaded.family.forward_keys) <= set(batch)
    with torch.no_grad():
        logits = loaded.model(**batch).logits  # [B, T, V]
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0, -1], logits[1, -1], atol=1e-4)


def test_batched_generate_with_left_padding_matches_one_by_one(frozen_models, family):
    loaded = frozen_models[family]
    imgs = images()
    batch = build_inputs(loaded, imgs, PROMPTS)
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()
    greedy = explicit_generation_config(loaded.tokenizer, [], temperature=0, max_new_tokens=8)
    with torch.no_grad():
        batched = generate_ids(loaded.model, batch, greedy)
        batched_logits = loaded.model(**batch).logits[:, -1]
    prompt_len = batch["input_ids"].shape[1]
    eos = loaded.model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])

    def until_eos(ids):  # a row that finished early is padded in the batch
        ids = ids.tolist()
        return ids[: next((k + 1 for k, t in enumerate(ids) if t in eos), len(ids))]

    for i in range(len(PROMPTS)):
        alone = build_inputs(loaded, [imgs[i]], [PROMPTS[i]])
        with torch.no_grad():
            single = generate_ids(loaded.model, alone, greedy)
            single_logits = loaded.model(**alone).logits[:, -1]
        torch.testing.assert_close(batched_logits[i], single_logits[0], atol=1e-4, rtol=1e-4)
        assert until_eos(batched[i, prompt_len:]) == until_eos(single[0, alone["input_ids"].shape[1] :])


def test_answers_are_labelled_with_their_eos_and_prompts_are_not(frozen_models, family):
    loaded = frozen_models[family]
    prompt_only = build_inputs(loaded, images(), PROMPTS)
    batch = build_inputs(loaded, images(), PROMPTS, answers=ANSWERS)
    tokenizer = loaded.tokenizer
    for i, answer in enumerate(ANSWERS):
        labelled = batch["labels"][i][batch["labels"][i] != -100]
        assert tokenizer.decode(labelled) == answer + tokenizer.eos_token
        prompt = prompt_only["input_ids"][i][prompt_only["attention_mask"][i].bool()]
        row = batch["input_ids"][i][batch["attention_mask"][i].bool()]
        assert row[: len(prompt)].tolist() == prompt.tolist()  # the prompt is token for token unchanged
    with torch.no_grad():
        loss = loaded.model(**batch).loss
    assert torch.isfinite(loss)


def lora_step(model, batch, steps=2):
    """Two AdamW steps without weight decay: B starts at zero, so A gets a gradient from step 2 on."""
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


def test_lora_step_changes_every_lora_parameter_and_no_frozen_one(tiny_dirs, family):
    loaded = load_model(lora_cfg(family, tiny_dirs[family]))
    model = loaded.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".language_model." in n for n in trainable)  # LoRA stays out of the vision tower
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora_step(model, build_inputs(loaded, images(), PROMPTS, answers=ANSWERS))
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (name in trainable), name


@pytest.mark.parametrize("part", ["projector", "vision_tower"])
def test_projector_or_vision_tower_trained_fully_and_saved_with_the_adapter(
    tiny_dirs, family, part, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    loaded = load_model(lora_cfg(family, tiny_dirs[family], **{f"train_{part}": True}))
    model, tower, projector = loaded.model, loaded.family.vision_tower, loaded.family.projector
    full = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert full and all(".modules_to_save." in n for n in full)
    in_projector = {n for n in full if f"{projector}." in n}
    if part == "projector":
        assert in_projector == full
    else:  # the tower without the projector, also where it sits inside the tower (Qwen's merger)
        assert not in_projector and all(f"{tower}." in n for n in full)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n in full}
    batch = build_inputs(loaded, images(), PROMPTS, answers=ANSWERS)
    lora_step(model, batch)
    # LLaVA reads CLIP's second-to-last layer, so its last layer gets no gradient (as in real LLaVA).
    changed = {n for n, p in model.named_parameters() if n in full and not torch.equal(before[n], p)}
    assert changed and all(p.grad is None for n, p in model.named_parameters() if n in full - changed)
    model.save_pretrained(tmp_path)
    base = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, atol=1e-6, rtol=0)


def test_lora_adapter_reloads_with_plain_peft_to_identical_logits(tiny_dirs, family, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    loaded = load_model(lora_cfg(family, tiny_dirs[family]))
    with torch.no_grad():  # non-zero B so the adapter matters
        for name, param in loaded.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    batch = build_inputs(loaded, images(), PROMPTS)
    loaded.model.save_pretrained(tmp_path)
    base = AutoModelForImageTextToText.from_pretrained(tiny_dirs[family])
    with torch.no_grad():
        plain = base(**batch).logits
        reloaded = PeftModel.from_pretrained(base, tmp_path).eval()
        expected, got = loaded.model(**batch).logits, reloaded(**batch).logits
    assert not torch.allclose(expected, plain, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_checkpoint_of_another_family_raises_model_error(tiny_dirs):
    with pytest.raises(ModelError, match="is a llava model but model.family is 'qwen2-vl'"):
        load_model(ModelConfig(family="qwen2-vl", path=str(tiny_dirs["llava"])))


def test_lora_targets_that_match_nothing_raise_model_error(tiny_dirs):
    with pytest.raises(ModelError, match="matches no module.*q_proj"):
        load_model(lora_cfg("llava", tiny_dirs["llava"], target_modules=["qkv_proj"]))


def test_flash_attention_without_the_package_raises_model_error(tiny_dirs):
    cfg = ModelConfig(family="llava", path=str(tiny_dirs["llava"]), attn_implementation="flash_attention_2")
    with pytest.raises(ModelError, match="flash"):
        load_model(cfg)


def test_pixel_budget_is_rejected_for_llava(tiny_dirs):
    with pytest.raises(ModelError, match="Qwen families only"):
        load_model(ModelConfig(family="llava", path=str(tiny_dirs["llava"]), max_pixels=64 * 64))


def test_qwen_pixel_budget_from_config_sets_image_token_count(tiny_dirs):
    cfg = ModelConfig(family="qwen2-vl", path=str(tiny_dirs["qwen2-vl"]), lora=None, max_pixels=56 * 56)
    loaded = load_model(cfg, for_training=False)
    ids = build_inputs(loaded, [Image.new("RGB", (112, 112))], ["x"])["input_ids"]
    assert int((ids == loaded.processor.image_token_id).sum()) == 4  # (56/14)² / 4, down from 16


def test_qwen_checkpoint_in_legacy_layout_loads_without_torchvision(tiny_dirs, tmp_path):
    import shutil

    # Hub checkpoints such as Qwen2-VL-2B-Instruct have preprocessor_config.json but no processor_config.json.
    legacy = shutil.copytree(tiny_dirs["qwen2-vl"], tmp_path / "legacy")
    (legacy / "processor_config.json").unlink()
    loaded = load_model(ModelConfig(family="qwen2-vl", path=str(legacy), lora=None), for_training=False)
    batch = build_inputs(loaded, [Image.new("RGB", (64, 64))], ["x"])
    assert set(loaded.family.forward_keys) <= set(batch)
    assert loaded.processor.image_processor.size.longest_edge == 112 * 112


def test_model_info_counts_params_and_image_tokens(frozen_models, tiny_dirs, family):
    info = model_info(str(tiny_dirs[family]), image_size=200)
    loaded = frozen_models[family]
    assert info["family"] == family
    assert info["total_params"] == sum(p.numel() for p in loaded.model.parameters())
    default_lora = load_model(ModelConfig(family=family, path=str(tiny_dirs[family])))
    assert info["trainable_params_lora"] == sum(
        p.numel() for p in default_lora.model.parameters() if p.requires_grad
    )
    ids = build_inputs(loaded, [Image.new("RGB", (200, 200))], ["x"])["input_ids"]
    assert info["image_tokens"] == int((ids == loaded.processor.image_token_id).sum()) > 0
