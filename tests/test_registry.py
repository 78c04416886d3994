"""The one list of stages and the one list of model families, and the places that read them."""

from __future__ import annotations

import pytest

from vlmppo.registry import DATA_STAGES, FAMILIES, STAGES, TRAINING_STAGES, stage_info


def test_every_family_name_has_exactly_one_registered_adapter():
    from vlmppo.models import FAMILIES as ADAPTERS

    assert tuple(ADAPTERS) == FAMILIES
    assert all(adapter.name == name for name, adapter in ADAPTERS.items())


def test_config_accepts_every_family_name_and_lists_them_when_one_is_wrong():
    from vlmppo.config.schema import ModelConfig
    from vlmppo.errors import ConfigError

    for name in FAMILIES:
        assert ModelConfig(family=name, path=f"tiny:{name}").family == name
    from vlmppo.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config("numberline-tiny", overrides=["model.family=gpt4"])
    assert all(name in str(err.value) for name in FAMILIES)


def test_cli_registers_one_command_per_stage_in_pipeline_order_then_the_pipeline():
    from vlmppo.cli import app

    names = [c.name for c in app.registered_commands]
    assert names[: len(STAGES) + 1] == [*STAGES, "pipeline"]


def test_stage_kinds_split_the_pipeline_into_data_training_and_eval():
    assert STAGES == ("collect", "label", "preprocess", "sft", "ppo", "eval")
    assert DATA_STAGES == ("collect", "label", "preprocess")
    assert TRAINING_STAGES == ("sft", "ppo")
    assert stage_info("preprocess").folder == "data"
    assert stage_info("eval").folder is None


def test_every_config_section_a_stage_reads_exists():
    from vlmppo.config import Config

    for name in STAGES:
        assert set(stage_info(name).sections) <= set(Config.model_fields), name


def test_slurm_help_lists_every_stage_and_the_pipeline():
    from typer.testing import CliRunner

    from vlmppo.cli import app

    out = CliRunner().invoke(app, ["slurm", "render", "--help"], env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert " | ".join((*STAGES, "pipeline")) in out.output
