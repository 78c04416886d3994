"""Load a run's config: schema defaults <- preset <- --config file <- key.sub=value overrides.

Every problem found while validating is reported at once, each naming the key, the file (or the
command line) that set it, and what would be valid.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vlmppo.config.presets import find_preset
from vlmppo.config.schema import Config
from vlmppo.errors import ConfigError

COMMAND_LINE = "the command line"


@dataclass
class Layer:
    """One source of settings, kept so errors can say where a bad value came from."""

    source: str
    values: dict


def read_yaml_mapping(path: Path) -> dict:
    """Read a YAML file that must hold a mapping; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} cannot be read as text ({exc}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path} must hold a YAML mapping of sections (run:, env:, model:, ...), "
            f"but it holds a {type(data).__name__}."
        )
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value``; the value is read as a YAML scalar or list (``[1, 2]``, ``null``, ``0.1``)."""
    if "=" not in text:
        raise ConfigError(
            f"Override '{text}' has no '='.",
            hint="Write overrides as key.sub=value, e.g. ppo.clip_range=0.2 env.n_envs=8.",
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"Override '{text}' has an empty key part; write it as section.key=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # an unparseable value stays a string; the schema then judges it
    return key.split("."), value


def overrides_to_dict(overrides: list[str]) -> dict:
    """Turn ``["a.b=1", "a.c=x"]`` into ``{"a": {"b": 1, "c": "x"}}``."""
    nested: dict = {}
    for text in overrides:
        keys, value = parse_override(text)
        node = nested
        for part in keys[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"Override '{text}' goes below '{part}', which an earlier override set to a value."
                )
            node = child
        node[keys[-1]] = value
    return nested


def deep_merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into a copy of ``base``; nested mappings merge, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Resolve a run's config from its layers.

    Args:
        preset: a shipped preset's name or a path to a YAML file.
        config_file: a YAML file applied on top of the preset (e.g. a resolved ``config.yaml``).
        overrides: ``key.sub=value`` strings applied last.

    Raises:
        ConfigError: naming every invalid key or value at once.
    """
    layers: list[Layer] = []
    if preset:
        path = find_preset(preset)
        layers.append(Layer(f"preset {path}", read_yaml_mapping(path)))
    if config_file:
        path = Path(config_file)
        layers.append(Layer(f"config file {path}", read_yaml_mapping(path)))
    if overrides:
        layers.append(Layer(COMMAND_LINE, overrides_to_dict(overrides)))
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer.values)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, layers)) from None


def _source_of(loc: tuple, layers: list[Layer]) -> str:
    """The last layer that set the value at ``loc`` (where the user should look)."""
    for layer in reversed(layers):
        node: Any = layer.values
        found = True
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                found = False
                break
        if found:
            return layer.source
    return "the defaults"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The schema class that holds the key at ``loc`` (to list the valid keys beside it)."""
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            return None
        model = nested
    return model


def _describe_errors(exc: ValidationError, layers: list[Layer]) -> str:
    problems = []
    for err in exc.errors():
        # Pydantic appends the union branch name (e.g. "LoraConfig") to loc; drop it for the user.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
        key = ".".join(str(p) for p in loc) or "(config)"
        source = _source_of(loc, layers)
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            problems.append(
                f"unknown key '{key}' (from {source}).{hint} Valid keys here: {', '.join(valid)}."
            )
        elif err["type"] == "value_error" and not loc:
            problems.append(f"{err['msg'].removeprefix('Value error, ')} (from {source}).")
        else:
            given = err.get("input")
            shown = f" (got {given!r})" if not isinstance(given, dict) else ""
            problems.append(f"'{key}': {err['msg']}{shown} (from {source}).")
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"Invalid configuration, {count}:\n  - " + "\n  - ".join(problems)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, in schema order (what ``--dry-run`` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def run_dir(cfg: Config) -> Path:
    """The run's output folder, ``<run.output_dir>/<run.name>``."""
    return Path(cfg.run.output_dir) / cfg.run.name
