"""vlmppo.config.compare: what counts as a changed setting between a recorded config and this run's."""

from __future__ import annotations

import copy

from vlmppo.config.compare import section_changes
from vlmppo.config.schema import Config


def dump(**overrides) -> dict:
    cfg = Config()
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg.model_dump(mode="json")


def test_a_changed_value_is_named_with_both_values():
    assert section_changes(dump(sft__lr=5e-4), dump(sft__lr=1e-4), ("sft",)) == ["sft.lr: 0.0005 -> 0.0001"]
    assert section_changes(dump(sft__lr=5e-4), dump(sft__lr=1e-4), ("ppo",)) == []  # other sections only


def test_a_setting_newer_than_the_record_is_a_change_only_away_from_its_default():
    now = dump()
    older = copy.deepcopy(now)
    assert older["sft"].pop("eval_episodes") is None  # a record written before sft.eval_episodes existed
    assert section_changes(older, now, ("sft",)) == []
    used = dump(sft__eval_episodes=8)
    assert section_changes(older, used, ("sft",)) == ["sft.eval_episodes: (not recorded) -> 8"]
    # a whole section the record lacks: each of its settings against its default
    assert section_changes({}, now, ("ppo",)) == []


def test_nested_settings_compare_key_by_key_and_none_against_a_table_is_a_change():
    now = dump()
    older = copy.deepcopy(now)
    older["model"]["lora"].pop("train_projector")
    assert section_changes(older, now, ("model",)) == []
    older["model"]["lora"]["r"] = 8
    assert section_changes(older, now, ("model",)) == [f"model.lora.r: 8 -> {now['model']['lora']['r']}"]
    no_lora = copy.deepcopy(now)
    no_lora["model"]["lora"] = None
    assert section_changes(no_lora, now, ("model",)) == [f"model.lora: None -> {now['model']['lora']!r}"]


def test_a_setting_this_version_no_longer_knows_and_where_a_run_stops_are_not_changes():
    now = dump()
    older = copy.deepcopy(now)
    older["sft"]["a_removed_setting"] = 3
    older["sft"]["stop_at_step"] = 808  # config.WHERE_IT_STOPS
    assert section_changes(older, now, ("sft",)) == []
