"""The end of an answer is the chat template's end-of-turn token, whatever the checkpoint's eos says."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from vlmppo.config.schema import ModelConfig
from vlmppo.models import load_model
from vlmppo.models.inputs import IGNORE_INDEX, build_inputs
from vlmppo.models.tiny import tiny_model_path

# llava-hf's own style: the assistant's text is followed by a space, not by a special token.
PLAIN_TEXT_TURNS = (
    "{%- for message in messages -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- else -%}{{- part['text'] + ' ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def _checkpoint_copy(family, tmp_path, edit):
    """A copy of the tiny checkpoint with its processor edited and saved back, as a user's folder."""
    folder = tmp_path / family
    shutil.copytree(tiny_model_path(family), folder)
    loaded = load_model(ModelConfig(family=family, path=str(folder), lora=None), for_training=False)
    edit(loaded.processor)
    loaded.processor.save_pretrained(folder)
    return folder


def _label_tail(loaded) -> str:
    image = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    batch = build_inputs(loaded, [image], ["Which way?"], answers=['{"action": "left"}'])
    labels = batch["labels"][0]
    return loaded.tokenizer.decode(labels[labels != IGNORE_INDEX][-1:])


def test_a_base_qwen_checkpoint_ends_answers_with_im_end_not_its_eos(tmp_path):
    def base_model_eos(processor):
        processor.tokenizer.eos_token = "<|endoftext|>"  # what a Qwen-VL base (non-instruct) model has

    folder = _checkpoint_copy("qwen2-vl", tmp_path, base_model_eos)
    loaded = load_model(ModelConfig(family="qwen2-vl", path=str(folder), lora=None), for_training=False)
    assert loaded.tokenizer.eos_token == "<|im_end|>"
    assert _label_tail(loaded) == "<|im_end|>"


def test_a_template_that_ends_turns_with_text_keeps_the_eos(tmp_path):
    def llava_hf_template(processor):
        processor.chat_template = PLAIN_TEXT_TURNS

    folder = _checkpoint_copy("llava", tmp_path, llava_hf_template)
    loaded = load_model(ModelConfig(family="llava", path=str(folder), lora=None), for_training=False)
    assert loaded.processor.chat_template == PLAIN_TEXT_TURNS
    assert loaded.tokenizer.eos_token == "</s>"
    assert _label_tail(loaded) == "</s>"
