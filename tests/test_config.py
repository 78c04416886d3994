"""Config loading: layers, overrides, and every kind of bad input named clearly."""

from __future__ import annotations

import pytest

from vlmppo.config import load_config
from vlmppo.config.loader import parse_override
from vlmppo.config.plan import ppo_counts
from vlmppo.config.presets import list_presets, preset_names
from vlmppo.errors import ConfigError


def test_every_shipped_preset_loads_and_validates():
    names = preset_names()
    assert len(names) >= 20
    for info in list_presets():
        cfg = load_config(info.name)
        assert cfg.env.id == info.env_id
        assert cfg.model.family == info.family
        assert info.purpose, f"{info.name} has no purpose line in its header"


def test_presets_named_in_the_design_are_shipped():
    expected = {
        "numberline-qwen",
        "blackjack-qwen",
        "ezpoints-qwen",
        "points24-qwen",
        "numberline-llava",
        "blackjack-llava",
        "ezpoints-llava",
        "points24-llava",
        "minigrid-doorkey-qwen",
        "minigrid-empty-qwen",
        "minigrid-multiroom-qwen",
        "numberline-tiny",
        "minigrid-doorkey-tiny",
        "probe-constant-tiny",
        "probe-color-tiny",
        "probe-twostep-tiny",
    }
    assert expected <= set(preset_names())


def test_seed_hyperparameters_are_the_defaults_of_the_cards_presets():
    cfg = load_config("numberline-qwen")
    p = cfg.ppo
    assert (p.gamma, p.gae_lambda, p.clip_range, p.clip_range_vf, p.vf_coef) == (0.9, 0.95, 0.1, 0.1, 0.5)
    assert (p.thought_coef, p.temperature, p.max_new_tokens, p.n_epochs) == (0.5, 0.2, 256, 4)
    assert (p.lr, p.min_lr) == (1e-5, 1e-9)
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (128, 256, 0.05)
    assert (cfg.sft.lr, cfg.sft.warmup_ratio, cfg.sft.epochs, cfg.sft.lr_schedule) == (
        1e-4,
        0.03,
        6,
        "cosine",
    )
    mg = load_config("minigrid-doorkey-qwen").ppo
    assert (mg.thought_coef, mg.temperature) == (0.3, 1.0)


def test_overrides_apply_last_and_parse_yaml_scalars_and_lists(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("ppo:\n  clip_range: 0.3\n  gamma: 0.5\n")
    cfg = load_config("numberline-tiny", extra, ["ppo.gamma=0.99", "eval.seeds=[1, 2]", "model.lora=null"])
    assert cfg.ppo.clip_range == 0.3  # from the --config file
    assert cfg.ppo.gamma == 0.99  # the override wins over the file
    assert cfg.eval.seeds == [1, 2]
    assert cfg.model.lora is None


def test_unknown_preset_lists_close_matches():
    with pytest.raises(ConfigError, match="numberline-tiny"):
        load_config("numberline-tin")


def test_preset_file_that_is_not_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML at line \d"):
        load_config(str(bad))


def test_preset_file_that_is_not_a_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a YAML mapping"):
        load_config(str(bad))


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_preset_or_config_file_is_refused_not_run_with_defaults(tmp_path, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    with pytest.raises(ConfigError, match=f"Preset {empty} is empty: it sets nothing"):
        load_config(str(empty))
    with pytest.raises(ConfigError, match=f"Config file {empty} is empty"):
        load_config("numberline-tiny", empty)


def test_a_preset_path_to_a_file_that_is_not_yaml_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("run:\n  name: x\n")
    for given in ("notes.txt", str(tmp_path / "notes.txt")):
        with pytest.raises(ConfigError, match=r"notes.txt is not a YAML file \(a preset ends in .yaml"):
            load_config(given)


def test_a_preset_path_to_a_folder_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myruns").mkdir()
    for given in ("myruns", "myruns/", str(tmp_path / "myruns")):
        with pytest.raises(ConfigError, match="myruns is a folder, not a YAML file"):
            load_config(given)
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        load_config("numberline-tiny", tmp_path / "myruns")


def test_a_shipped_preset_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "numberline-tiny").mkdir()  # e.g. standing in runs/, where run folders carry preset names
    assert load_config("numberline-tiny").env.id == "gym_cards/NumberLine-v0"


def test_unknown_nested_key_is_named_with_valid_keys_and_source(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("numberline-tiny", overrides=["ppo.clip_rnge=0.2", "model.lora.rank=4"])
    text = str(err.value)
    assert "unknown key 'ppo.clip_rnge'" in text and "Did you mean clip_range" in text
    assert "unknown key 'model.lora.rank'" in text and "Valid keys here: alpha, dropout, r," in text
    assert "2 problems" in text and "the command line" in text


def test_unknown_section_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("trainer:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'trainer' \(from preset .*p.yaml\)"):
        load_config(str(bad))


def test_wrong_type_is_named_with_the_value():
    with pytest.raises(ConfigError, match=r"'ppo.gamma': .*number.*'abc'"):
        load_config("numberline-tiny", overrides=["ppo.gamma=abc"])


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config("numberline-tiny", overrides=["ppo.gamma=abc", "env.n_envs=0", "run.sed=1"])
    assert "3 problems" in str(err.value)


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="has no '='"):
        parse_override("ppo.gamma")


def test_minibatch_larger_than_rollout_is_a_contradiction():
    with pytest.raises(ConfigError, match=r"minibatch_size \(64\) is larger than one rollout"):
        load_config("numberline-tiny", overrides=["ppo.minibatch_size=64", "ppo.micro_batch_size=8"])


def test_micro_batch_must_divide_minibatch():
    with pytest.raises(ConfigError, match="not a multiple of ppo.micro_batch_size"):
        load_config("numberline-tiny", overrides=["ppo.micro_batch_size=3"])


def test_unsupported_family_lists_the_supported_ones():
    with pytest.raises(ConfigError, match="model.family.*qwen2-vl"):
        load_config("numberline-tiny", overrides=["model.family=gpt4"])


def test_tiny_path_must_match_family():
    with pytest.raises(ConfigError, match="use model.path=tiny:llava"):
        load_config("numberline-tiny", overrides=["model.family=llava"])


def test_ppo_counts_derive_updates_and_optimizer_steps():
    cfg = load_config(
        "numberline-tiny",
        overrides=[
            "env.n_envs=4",
            "ppo.n_steps=8",
            "ppo.total_env_steps=100",
            "ppo.minibatch_size=16",
            "ppo.micro_batch_size=4",
        ],
    )
    counts = ppo_counts(cfg)
    # 4 envs x 8 steps = 32 per update; ceil(100 / 32) = 4 updates; 32 // 16 = 2 minibatches x 4 epochs.
    assert counts == {
        "rollout_size": 32,
        "global_rollout_size": 32,
        "updates": 4,
        "env_steps_run": 128,
        "minibatches_per_epoch": 2,
        "optimizer_steps_per_update": 8,
        "micro_steps_per_optimizer_step": 4,
        "dropped_per_epoch": 0,
    }
    # Over 2 data-parallel ranks (each its own 4 envs): 64 env steps per update, ceil(100 / 64) = 2 updates; each
    # rank still takes 8 optimizer steps per update (its minibatches of 16, gradients averaged).
    two = ppo_counts(cfg, world=2)
    assert (two["global_rollout_size"], two["updates"], two["env_steps_run"]) == (64, 2, 128)
    assert two["optimizer_steps_per_update"] == 8


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("auto", "auto")])
def test_merged_sampling_takes_true_false_or_auto(value, expected):
    assert (
        load_config("numberline-tiny", overrides=[f"ppo.merged_sampling={value}"]).ppo.merged_sampling
        == expected
    )


def test_a_bad_merged_sampling_value_names_the_key_the_choices_and_the_command_line():
    with pytest.raises(ConfigError) as info:
        load_config("numberline-tiny", overrides=["ppo.merged_sampling=maybe"])
    message = str(info.value)
    assert "'ppo.merged_sampling'" in message and "'auto', True or False" in message
    assert "from the command line" in message


@pytest.mark.parametrize(
    "override, line",
    [
        # a union field: one line for the key, every accepted form, no branch tags
        (
            "model.lora.target_modules=5",
            "'model.lora.target_modules': Input should be a valid list, or input should be 'all-linear' (got 5) "
            "(from the command line).",
        ),
        # an item of a list: the user's own layer, not "the defaults"
        ("eval.seeds=[a]", "'eval.seeds.0': Input should be a valid integer"),
        ("model.lora.bogus=1", "unknown key 'model.lora.bogus' (from the command line)."),
    ],
)
def test_errors_name_the_users_key_and_the_layer_it_came_from(override, line):
    with pytest.raises(ConfigError) as info:
        load_config("numberline-tiny", overrides=[override])
    problems = str(info.value).splitlines()[1:]
    assert len(problems) == 1 and line in problems[0] and "from the command line" in problems[0]
