"""`vlmppo bench`: the CLI end to end on a tiny preset, clear errors, the fixed answer length, the 2B shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e  # the bench CLI

HELP_PROBE = """
import sys
from vlmppo.cli import app
try:
    app(["bench", "--help"])
except SystemExit:
    pass
print("HEAVY=" + ",".join(m for m in ("torch", "transformers", "gymnasium") if m in sys.modules))
"""


def test_bench_help_imports_no_torch():
    out = subprocess.run(
        [sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, env={"COLUMNS": "200"}, timeout=60
    )
    assert "--n-envs" in out.stdout and "Examples:" in out.stdout
    assert out.stdout.strip().endswith("HEAVY=")


def test_bench_cli_measures_batch1_and_batched_rows_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "tiny.json"
    proc = run_cli(
        "bench",
        "--preset",
        "numberline-tiny",
        "--n-envs",
        "2",
        "--repeats",
        "1",
        "--out",
        str(out),
        "ppo.max_new_tokens=6",
        env={"OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    rows = {r["mode"]: r for r in data["rollout"]}
    assert set(rows) == {"batch-1 sequential", "batched"}
    assert (rows["batch-1 sequential"]["n_envs"], rows["batched"]["n_envs"]) == (1, 2)
    for row in rows.values():
        assert row["env_steps_per_s"] > 0 and row["gen_tokens_per_s"] > 0
        assert row["gen_tokens"] == row["env_steps"] * 6  # every answer forced to max_new_tokens
    assert rows["batch-1 sequential"]["speedup_vs_batch1"] == pytest.approx(1.0)
    update = data["update"]
    assert update["tokens_per_s"] > 0 and update["samples_per_s"] > 0 and update["samples"] == 2
    assert data["meta"]["max_new_tokens"] == 6 and data["meta"]["device"] == "cpu"
    markdown = out.with_suffix(".md").read_text()
    assert "| batch-1 sequential | generate | 1 |" in markdown and "| batched | generate | 2 |" in markdown
    assert "batch-1 sequential" in proc.stdout and "update" in proc.stdout


def test_bench_cli_measures_both_decoders_with_drawn_answer_lengths(tmp_path):
    out = tmp_path / "decoders.json"
    proc = run_cli(
        "bench", "--preset", "numberline-tiny", "--n-envs", "3", "--repeats", "1", "--out", str(out),
        "--decoders", "generate,static", "--answer-lengths", "2-5", "ppo.max_new_tokens=6",
        env={"OMP_NUM_THREADS": "1"}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    rows = [(r["mode"], r["decoder"], r["n_envs"]) for r in data["rollout"]]
    assert rows == [
        ("batch-1 sequential", "generate", 1),
        ("batched", "generate", 3),
        ("batched", "static", 3),
    ]
    for row in data["rollout"]:
        assert 2 * row["env_steps"] <= row["gen_tokens"] <= 5 * row["env_steps"]
        assert row["ms_per_position"] > 0 and row["vision_s"] > 0 and row["floor_ms"] is None  # CPU: no floor
    assert data["meta"]["answer_lengths"] == "2-5"
    assert "| batched | static | 3 |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--shape", "qwen-99b"], "Unknown model shape 'qwen-99b'"),
        (["--n-envs", "0"], "'0' is not a positive whole number"),
        (["--n-envs", "1,eight"], "'eight' is not a positive whole number"),
        (["--repeats", "0"], "need at least 1 timed repeat"),
        (["--shape", "qwen2-vl-2b"], "needs a CUDA GPU"),
        (["--decoders", "vllm"], "vllm is not a decoder"),
        (["--answer-lengths", "80-30"], "neither 'forced' nor a range"),
    ],
    ids=["unknown-shape", "zero-envs", "not-a-number", "zero-repeats", "2b-on-cpu", "decoder", "lengths"],
)
def test_bench_bad_input_is_one_clear_error_without_traceback(tmp_path, args, words):
    proc = run_cli(
        "bench", "--preset", "numberline-tiny", *args, "--out", str(tmp_path / "b.json"), timeout=120
    )
    assert proc.returncode == 1
    assert "error:" in proc.stderr and words in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.fixture(scope="module")
def tiny_policy():
    from vlmppo.config import load_config
    from vlmppo.rl.startup import build_policy

    cfg = load_config("numberline-tiny", None, ["ppo.temperature=1.0"])
    return cfg, build_policy(cfg, "cpu")


def _boost_logit(policy, token_id: int):
    """Make `token_id` the model's overwhelming choice at every position (a forward hook on the LM head)."""

    def hook(module, inputs, output):
        output[..., token_id] += 1e4
        return output

    return policy.loaded.model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("decoder", ["generate", "static"])
def test_forced_answer_lengths_hold_even_when_the_model_wants_to_stop(tiny_policy, decoder):
    from vlmppo.benchmark.rollout import make_bench_env
    from vlmppo.benchmark.runner import AnswerLengths
    from vlmppo.rl.rollout import rollout_step

    cfg, policy = tiny_policy
    vec = make_bench_env(cfg, 2)
    obs, infos = vec.reset()
    handle = _boost_logit(policy, policy.loaded.tokenizer.eos_token_id)
    policy.decoder = decoder
    try:
        cfg5 = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"max_new_tokens": 5})})
        step = rollout_step(policy, vec, obs, infos, cfg5)
        assert step.answer_lengths.tolist() == [1, 1]  # eos at once: the hook works
        policy.forced_lengths = AnswerLengths(5, None, seed=0)
        step = rollout_step(policy, vec, obs, infos, cfg5)
        assert step.answer_lengths.tolist() == [5, 5]
        policy.forced_lengths = AnswerLengths(5, (2, 4), seed=0)
        lengths = [
            length
            for _ in range(4)
            for length in rollout_step(policy, vec, obs, infos, cfg5).answer_lengths.tolist()
        ]
        assert set(lengths) <= {2, 3, 4} and len(set(lengths)) > 1  # drawn in the range, not all alike
    finally:
        handle.remove()
        policy.forced_lengths, policy.decoder = None, "generate"


def test_qwen2_vl_2b_shape_has_the_released_checkpoints_size():
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmppo.models.processors import load_processor
    from vlmppo.models.shapes import QWEN2_VL_2B
    from vlmppo.models.tiny import get_family, resolve_model_path

    tokenizer = load_processor(resolve_model_path("tiny:qwen2-vl"), get_family("qwen2-vl")).tokenizer
    with torch.device("meta"):  # sizes only: no memory, no random numbers
        model = AutoModelForImageTextToText.from_config(QWEN2_VL_2B.config(tokenizer))
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".visual." in n)
    assert 2.20e9 < total < 2.22e9 and 0.66e9 < vision < 0.67e9  # 2.21B and 675M as released
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (1536, 28, 12)
    assert (text.num_key_value_heads, text.intermediate_size, text.vocab_size) == (2, 8960, 151936)


def test_a_built_shape_loads_like_a_checkpoint_with_the_released_pixel_budget(tmp_path, monkeypatch):
    from PIL import Image

    from vlmppo.config.schema import ModelConfig
    from vlmppo.models import build_inputs, load_model
    from vlmppo.models.shapes import QWEN2_VL_2B, Shape, shape_model_path

    small = Shape(  # the 2B shape's layout at toy widths, built by the same code
        name="toy",
        family="qwen2-vl",
        text=dict(
            QWEN2_VL_2B.text,
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        ),
        vision=dict(QWEN2_VL_2B.vision, depth=1, embed_dim=32, num_heads=2, hidden_size=64),
    )
    monkeypatch.setenv("VLMPPO_CACHE", str(tmp_path))  # built into the cache, as `vlmppo bench` does
    path = shape_model_path(small)
    assert shape_model_path(small) == path and path.parent == tmp_path / "bench"  # the second call reuses it
    loaded = load_model(ModelConfig(family="qwen2-vl", path=str(path), lora=None), for_training=False)
    batch = build_inputs(loaded, [Image.new("RGB", (300, 300))], ["hi"])
    # 300 px -> 308 px (multiples of 28) -> 22 x 22 patches -> 121 tokens, as with Qwen2-VL-2B-Instruct.
    assert int((batch["input_ids"] == loaded.model.config.image_token_id).sum()) == 121
    assert loaded.model.config.text_config.vocab_size == 1024


def test_llava_next_mistral_7b_shape_has_the_released_checkpoints_size():
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmppo.models.shapes import LLAVA_NEXT_MISTRAL_7B, SHAPES

    assert SHAPES["llava-next-mistral-7b"] is LLAVA_NEXT_MISTRAL_7B  # `--shape` builds it
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(LLAVA_NEXT_MISTRAL_7B.config())
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for n, p in model.named_parameters() if ".vision_tower." in n)
    assert 7.5e9 < total < 7.6e9 and 0.30e9 < vision < 0.31e9  # 7.57B, CLIP ViT-L/14-336 303M
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (4096, 32, 8)


def test_a_built_llava_next_shape_takes_the_released_image_token_count(tmp_path, monkeypatch):
    from PIL import Image

    from vlmppo.config.schema import ModelConfig
    from vlmppo.models import build_inputs, load_model
    from vlmppo.models.shapes import LLAVA_NEXT_MISTRAL_7B, Shape, shape_model_path

    small = Shape(  # the 7B shape's CLIP views and grid of crops, toy widths
        name="toy-llava",
        family="llava-next",
        text=dict(LLAVA_NEXT_MISTRAL_7B.text, vocab_size=1024, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2),
        vision=dict(LLAVA_NEXT_MISTRAL_7B.vision, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, projection_dim=32),
        min_pixels=None,
        max_pixels=None,
        tie_word_embeddings=False,
        released_ids=LLAVA_NEXT_MISTRAL_7B.released_ids,
    )  # fmt: skip
    monkeypatch.setenv("VLMPPO_CACHE", str(tmp_path))
    path = shape_model_path(small)
    loaded = load_model(ModelConfig(family="llava-next", path=str(path), lora=None), for_training=False)
    batch = build_inputs(loaded, [Image.new("RGB", (300, 300))], ["hi"])
    # 336 px CLIP views of 24 x 24 patches: the base view + the 1 x 2 grid's crops unpadded to the square
    # frame + one newline per row: 1176, as the memory estimate counts
    assert int((batch["input_ids"] == loaded.model.config.image_token_index).sum()) == 1176
    with __import__("torch").no_grad():
        assert loaded.model(**batch).logits.shape[-1] == 1024


def test_method_clock_times_calls_and_restores_nested_wrappers():
    from vlmppo.benchmark.timing import MethodClock

    class Policy:
        def score(self, x):
            return x + 1

    policy = Policy()
    policy.score = lambda x: Policy.score(policy, x) * 10  # e.g. another wrapper's instance attribute
    clock = MethodClock("cpu")
    clock.wrap(policy, "score", "score")
    assert policy.score(1) == 20 and clock.seconds["score"] > 0 and clock.last_result["score"] == 20
    clock.restore()
    assert policy.score(1) == 20  # the outer wrapper is back
    del policy.score
    clock.wrap(policy, "score", "score")
    clock.restore()
    assert "score" not in vars(policy) and policy.score(1) == 2
