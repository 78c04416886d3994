"""The model card of `vlmppo export`, from a run's record: every part the issue asks for, and the command line
that manifests record so the card can say how to reproduce the run."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml
from tests.helpers import run_cli

from vlmppo.export.card import is_hub_id, render_card
from vlmppo.export.record import preset_of, reproduce_commands

PIPELINE = "vlmppo pipeline --preset numberline-qwen run.name=nl"
RECORD = {
    "run": "nl",
    "stage": "ppo",
    "family": "qwen2-vl",
    "base_model": "Qwen/Qwen2-VL-2B-Instruct",
    "lora": True,
    "counts": {"update": 40, "env_steps": 20480},
    "env": {"id": "gym_cards/NumberLine-v0", "prompt": "cot"},
    "preset": "numberline-qwen",
    "stages": [
        {"stage": "collect", "created": "2026-12-01T10:00:00+0000", "command": PIPELINE, "policy": "expert",
         "counts": {"episodes": 500, "steps": 1900}, "seconds": 12.0},
        {"stage": "sft", "checkpoint": "final", "created": "2026-12-01T10:20:00+0000", "command": PIPELINE,
         "counts": {"step": 300}, "exported": False, "seconds": 1200.4},
        {"stage": "ppo", "checkpoint": "000040", "created": "2026-12-01T12:00:00+0000", "command": PIPELINE,
         "counts": {"update": 40}, "exported": True, "seconds": None},
    ],
    "evaluation": {"name": "ppo-000040", "episodes": 200, "success_rate": 0.81, "success_ci95": [0.75, 0.86],
                   "solved_rate": 0.9, "return_mean": 0.8123, "decoding": "greedy", "seeds": [1000, 2000],
                   "command": "vlmppo eval --ckpt runs/nl/ppo/checkpoints/last"},
    "baselines": [
        {"name": "expert", "episodes": 200, "success_rate": 1.0, "success_ci95": [0.98, 1.0], "return_mean": 1.0},
        {"name": "random", "episodes": 200, "success_rate": 0.12, "success_ci95": [0.08, 0.17], "return_mean": -0.5},
    ],
    "commands": [PIPELINE, "vlmppo eval --ckpt runs/nl/ppo/checkpoints/last"],
    "versions": {"vlmppo": "0.1.0"},
    "git_sha": "0123456789abcdef",
}  # fmt: skip


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_names_base_model_env_preset_and_the_eval_beside_the_baselines():
    card = render_card(RECORD, frames=["assets/episode.png"])
    assert front_matter(card) == {
        "library_name": "peft",
        "base_model": "Qwen/Qwen2-VL-2B-Instruct",
        "pipeline_tag": "image-text-to-text",
        "tags": [
            "vlmppo",
            "reinforcement-learning",
            "vision-language-model",
            "agent",
            "gym_cards/NumberLine-v0",
        ],
    }
    assert "- **Base model:** `Qwen/Qwen2-VL-2B-Instruct` (qwen2-vl)" in card
    assert "- **Environment:** `gym_cards/NumberLine-v0`, prompt style `cot`" in card
    assert "- **Preset:** `numberline-qwen`" in card
    assert "over 200 episodes (greedy decoding, seeds [1000, 2000])" in card
    assert "| **this model** (ppo-000040) | 200 | 81.0% | 75.0% - 86.0% | 90.0% | 0.812 |" in card
    assert "| expert (baseline) | 200 | 100.0% | 98.0% - 100.0% | - | 1.000 |" in card
    assert "| random (baseline) | 200 | 12.0% | 8.0% - 17.0% | - | -0.500 |" in card
    assert "![episode](assets/episode.png)" in card


def test_the_card_lists_the_stages_and_the_commands_that_reproduce_them():
    card = render_card(RECORD)
    assert "| collect | policy expert; episodes 500, steps 1900 | 2026-12-01T10:00:00+0000 | 12 s |" in card
    assert "| sft | checkpoint final: step 300 | 2026-12-01T10:20:00+0000 | 1200 s |" in card
    assert "| ppo | checkpoint 000040 (this model): update 40 | 2026-12-01T12:00:00+0000 | - |" in card
    block = card.split("## How to reproduce it")[1].split("```bash\n")[1].split("```")[0]
    assert block.splitlines() == RECORD["commands"]
    assert "One evaluated episode" not in card  # no frames given, no section


def test_a_merged_or_local_model_gets_plain_transformers_usage_and_no_hub_base_model():
    local = {**RECORD, "base_model": "/models/tiny"}
    merged = render_card(local, merged=True)
    assert front_matter(merged)["library_name"] == "transformers" and "base_model" not in front_matter(merged)
    assert (
        'AutoModelForImageTextToText.from_pretrained("THIS_FOLDER")' in merged and "PeftModel" not in merged
    )
    assert "This folder holds the merged model" in merged
    adapter = render_card(local)
    assert 'base = AutoModelForImageTextToText.from_pretrained("/models/tiny")' in adapter
    assert 'PeftModel.from_pretrained(base, "THIS_FOLDER")' in adapter


def test_an_unevaluated_checkpoint_says_how_to_evaluate_it_and_a_run_without_commands_gives_the_config():
    card = render_card({**RECORD, "evaluation": None, "commands": []})
    assert "This checkpoint was not evaluated in its run (`vlmppo eval --ckpt ...`)." in card
    assert "| **this model**" not in card
    assert "`vlmppo pipeline --config vlmppo/config.yaml` (the run's resolved config)." in card


@pytest.mark.parametrize(
    ("name", "hub"),
    [("Qwen/Qwen2-VL-2B-Instruct", True), ("/root/.cache/vlmppo/tiny/qwen2-vl-v2", False),
     ("tiny:qwen2-vl", False), ("models/a/b", False), ("./x/y", False), (None, False)],
)  # fmt: skip
def test_only_hub_ids_become_the_cards_base_model(name, hub):
    assert is_hub_id(name) is hub


def test_the_preset_is_read_from_the_recorded_command_and_commands_are_listed_once():
    assert preset_of("vlmppo ppo --preset numberline-tiny ppo.lr=1e-4") == "numberline-tiny"
    assert preset_of("vlmppo ppo -p 'my presets/x.yaml'") == "my presets/x.yaml"
    assert preset_of("vlmppo ppo --preset=probe-color-tiny") == "probe-color-tiny"
    assert preset_of("vlmppo ppo --config run.yaml") is None and preset_of(None) is None
    stages = [{"command": "a"}, {"command": None}, {"command": "b"}, {"command": "a"}]
    assert reproduce_commands(stages, {"command": "c"}) == ["a", "b", "c"]


@pytest.mark.e2e
def test_a_stage_run_from_the_cli_records_its_command_line_in_its_manifest(tmp_path):
    args = ["collect", "--preset", "probe-constant-tiny", f"run.output_dir={tmp_path}", "run.name=p",
            "collect.episodes=2"]  # fmt: skip
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "p/collect/manifest.json").read_text())
    assert manifest["command"] == shlex.join(["vlmppo", *args])
    assert preset_of(manifest["command"]) == "probe-constant-tiny"
