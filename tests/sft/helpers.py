"""SFT test helpers: a small Color-probe dataset written the way `vlmppo preprocess` writes one, and a config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_color_dataset(root: Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """``root/data/{train,val}.jsonl`` + frames: red -> "left", blue -> "right", with the env's own prompt
    and answer format (thoughts + action), colours drawn at random."""
    from vlmppo.data.preprocess import sft_example
    from vlmppo.envs import get_adapter

    adapter = get_adapter("probe/Color-v0")
    rng = np.random.default_rng(seed)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    paths = []
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for k in range(n):
            color = ["red", "blue"][int(rng.integers(0, 2))]
            index = 0 if color == "red" else 1
            frame = root / "frames" / f"{split}-{k}.png"
            Image.new("RGB", (64, 64), (255, 0, 0) if color == "red" else (0, 0, 255)).save(frame)
            info = {"color": color, "correct_action": adapter.legal_actions[index], "correct_index": index}
            answer = adapter.format_answer(index, f"the image is {color}")
            rows.append(
                sft_example(adapter.prompt(info), answer, f"../frames/{frame.name}", episode=k, step=0)
            )
        path = root / "data" / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]


def sft_config(tmp_path, train, val, *extra: str, preset: str = "probe-color-tiny"):
    """A tiny SFT config over the given files; every run writes under ``tmp_path/runs``."""
    from vlmppo.config import load_config

    return load_config(
        preset,
        overrides=[
            f"run.output_dir={tmp_path / 'runs'}",
            f"sft.train_file={train}",
            f"sft.val_file={val}",
            "sft.batch_size=4",
            "sft.warmup_ratio=0",
            "sft.lr=1e-2",
            "sft.eval_every=1000",
            "sft.save_every=1000",
            *extra,
        ],
    )
