"""small:<family> models: built from code like the tiny ones, cached, loaded back through the real loading path,
sized for learning (parameters, image tokens at the size the digits and cells stay legible)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmppo.config import load_config
from vlmppo.errors import ConfigError
from vlmppo.models.adapter import SMALL
from vlmppo.models.generation import Generator
from vlmppo.models.inputs import build_inputs
from vlmppo.models.loading import load_model, load_model_config
from vlmppo.models.tiny import MARKER, SMALL_VERSION, built_size, resolve_model_path, tiny_model_dir


def numberline_frame(current: int) -> np.ndarray:
    from vlmppo.envs.cards.numberline import NumberLineEnv

    env = NumberLineEnv(render_mode="rgb_array")
    env.reset(seed=0)
    env.current, env.target = current, 5
    return env._draw()


@pytest.mark.parametrize("family", ["qwen2-vl", "llava"])
def test_small_model_builds_loads_and_answers_through_the_real_path(family):
    folder = resolve_model_path(f"small:{family}")
    assert folder == tiny_model_dir(family, SMALL) and folder.name == f"{family}-{SMALL_VERSION}"
    marker = json.loads((folder / MARKER).read_text())
    assert marker["small_version"] == SMALL_VERSION and 5e6 < marker["parameters"] < 5e7
    cfg = load_config("numberline-small", overrides=[f"model.family={family}", f"model.path=small:{family}"])
    assert load_model_config(cfg.model).text_config.hidden_size == SMALL.text["hidden_size"]
    loaded = load_model(cfg.model, device="cpu", for_training=False)
    assert sum(p.numel() for p in loaded.model.parameters()) == marker["parameters"]
    frames = [numberline_frame(1), numberline_frame(4)]
    batch = build_inputs(loaded, [Image.fromarray(f) for f in frames], ["Read the current number."] * 2)
    image_tokens = int((batch["input_ids"] == loaded.model.config.image_token_id).sum()) // 2
    assert image_tokens == (36 if family == "qwen2-vl" else 144)  # 168 px: 12x12 patches of 14 px
    with torch.no_grad():
        logits = loaded.model(**batch).logits
    assert torch.isfinite(logits).all() and not torch.allclose(logits[0, -1], logits[1, -1], atol=1e-5)
    answers = Generator(loaded, "cpu").generate_text(frames, ["Read the current number."] * 2, temperature=0.0,
                                                     max_new_tokens=4)  # fmt: skip
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_model_paths_name_their_size_and_a_mismatched_family_is_a_config_error():
    assert built_size("small:qwen2-vl") is SMALL and built_size("tiny:llava").name == "tiny"
    assert built_size("Qwen/Qwen2-VL-2B-Instruct") is None and built_size("/models/x") is None
    with pytest.raises(ConfigError, match="builds a small 'llava' model but model.family is 'qwen2-vl'"):
        load_config("numberline-small", overrides=["model.path=small:llava"])


@pytest.mark.parametrize("preset", ["numberline-small", "minigrid-empty-small", "minigrid-doorkey-small",
                                    "ezpoints-small"])  # fmt: skip
def test_small_presets_train_every_weight_of_a_small_model_at_legible_image_sizes(preset):
    cfg = load_config(preset)
    assert cfg.model.path == "small:qwen2-vl" and cfg.model.lora is None and cfg.model.dtype == "float32"
    assert cfg.collect.epsilon > 0 and cfg.label.labeller == "expert" and not cfg.preprocess.dedupe
    assert cfg.eval.episodes * len(cfg.eval.seeds) >= 200 and cfg.eval.greedy
    if cfg.env.id.startswith("MiniGrid"):
        assert cfg.env.tile_size * 6 == 168  # one cell = 2x2 patches = one merged image token
