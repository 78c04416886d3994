"""Chat templates (Jinja) that the tiny models ship, written to render like the real families' templates.

Real checkpoints bring their own template; these exist so a tiny model formats prompts the way its family
does (same turn markers, image placeholder first, same generation prompt), which is what the prompt-building
and answer-offset code downstream relies on. Message content may be a string or a list of parts
``{"type": "image"}`` / ``{"type": "text", "text": ...}``.
"""

from __future__ import annotations

# Qwen2-VL-Instruct and Qwen2.5-VL-Instruct: ChatML turns, a default system turn, each image as
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands <|image_pad|> to one token per merged patch).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

# llava-1.5 (Vicuna style): "USER: <image>\n{text} ASSISTANT:". Images of a turn come first, then its
# texts. Unlike llava-hf's template, an assistant turn ends with the eos token so that a rendered
# conversation shows where each answer stops (the model ends its answers with eos).
LLAVA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}"
    "{%- set parts = message['content'] -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in parts | selectattr('type', 'equalto', 'text') -%}{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- else -%}"
    "{{- message['role'].upper() + ': ' -}}"
    "{%- for part in parts | selectattr('type', 'equalto', 'image') -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- for part in parts | selectattr('type', 'equalto', 'text') -%}{{- part['text'] + eos_token -}}{%- endfor -%}"
    "{%- else -%}"
    "{%- for part in parts | selectattr('type', 'equalto', 'text') -%}{{- part['text'] + ' ' -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# llava-v1.6-mistral: "[INST] <image>\n{text} [/INST]" and the answer follows directly; the closing
# [/INST] is itself the generation prompt, so add_generation_prompt adds nothing.
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}"
    "{%- set parts = message['content'] -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for part in parts | selectattr('type', 'equalto', 'text') -%}"
    "{{- '<<SYS>>\\n' + part['text'] + '\\n<</SYS>>\\n\\n' -}}"
    "{%- endfor -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '[INST] ' -}}"
    "{%- for part in parts | selectattr('type', 'equalto', 'image') -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in parts | selectattr('type', 'equalto', 'text') -%}{{- part['text'] -}}{%- endfor -%}"
    "{{- ' [/INST]' -}}"
    "{%- else -%}"
    "{%- for part in parts | selectattr('type', 'equalto', 'text') -%}{{- ' ' + part['text'] + eos_token -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
