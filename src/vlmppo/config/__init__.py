"""Typed config, presets and overrides (see ``loader.load_config``)."""

from vlmppo.config.loader import WHERE_IT_STOPS, config_to_yaml, load_config, run_dir
from vlmppo.config.presets import find_preset, list_presets, presets_dir
from vlmppo.config.schema import Config

__all__ = [
    "WHERE_IT_STOPS",
    "Config",
    "config_to_yaml",
    "find_preset",
    "list_presets",
    "load_config",
    "presets_dir",
    "run_dir",
]
