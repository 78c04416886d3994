"""The SFT dataset in LLaMA-Factory's multimodal "sharegpt" layout (``vlmppo preprocess --format llamafactory``).

Beside ``train.jsonl``/``val.jsonl`` it writes, in ``runs/<name>/data/``::

    dataset_info.json            {"vlmppo_train": {...}, "vlmppo_val": {...}}: file, formatting, columns, tags
    llamafactory-train.jsonl     {"messages": [{"role": "user", "content": "<image>PROMPT"},
    llamafactory-val.jsonl                     {"role": "assistant", "content": ANSWER}],
                                  "images": ["images/000003/002.png"]}

as LLaMA-Factory's ``data/README.md`` documents it (the ``mllm_demo`` entry): one ``<image>`` placeholder
per image, image paths relative to the dataset folder (LLaMA-Factory's default ``media_dir`` is its
``dataset_dir``). Train with ``dataset_dir: runs/<name>/data`` and ``dataset: vlmppo_train``
(``eval_dataset: vlmppo_val``).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmppo.io import atomic_write_json, atomic_write_text

IMAGE_PLACEHOLDER = "<image>"
FILES = {"vlmppo_train": "llamafactory-train.jsonl", "vlmppo_val": "llamafactory-val.jsonl"}


def dataset_entry(file_name: str) -> dict:
    """One ``dataset_info.json`` entry: sharegpt formatting with OpenAI-style role/content messages."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }


def to_sharegpt(example: dict) -> dict:
    """A vlmppo example (``messages`` with content parts + ``images``) as a LLaMA-Factory row."""
    messages = []
    for message in example["messages"]:
        text = "".join(
            IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] for part in message["content"]
        )
        messages.append({"role": message["role"], "content": text})
    return {"messages": messages, "images": list(example["images"])}


def write_llamafactory(data_dir: Path, train: list[dict], val: list[dict]) -> Path:
    """Write the LLaMA-Factory files of a split dataset into ``data_dir``; returns ``dataset_info.json``."""
    data_dir = Path(data_dir)
    info = {}
    for name, rows in (("vlmppo_train", train), ("vlmppo_val", val)):
        if not rows:  # no val split (preprocess.val_fraction=0): no dataset LLaMA-Factory would fail to load
            (data_dir / FILES[name]).unlink(missing_ok=True)
            continue
        lines = "".join(json.dumps(to_sharegpt(r), ensure_ascii=False) + "\n" for r in rows)
        atomic_write_text(data_dir / FILES[name], lines)
        info[name] = dataset_entry(FILES[name])
    atomic_write_json(data_dir / "dataset_info.json", info)
    return data_dir / "dataset_info.json"


def remove_llamafactory(data_dir: Path) -> None:
    """Remove the files of an earlier ``--format llamafactory`` run: they would describe older data."""
    for name in (*FILES.values(), "dataset_info.json"):
        (Path(data_dir) / name).unlink(missing_ok=True)
