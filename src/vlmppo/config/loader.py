"""Load a run's config: schema defaults <- preset <- --config file <- key.sub=value overrides.

Every problem found while validating is reported at once, each naming the key, the file (or the
command line) that set it, and what would be valid.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vlmppo.config.presets import find_preset
from vlmppo.config.schema import Config
from vlmppo.errors import ConfigError

COMMAND_LINE = "the command line"
# Settings that say where a run stops, not what it trains: a run continued without them is the same run, so
# the pipeline's stage identity and the resume warnings (``sft.checkpointing.config_changes``) leave them out.
WHERE_IT_STOPS = {"sft": ("stop_at_step",)}


@dataclass
class Layer:
    """One source of settings, kept so errors can say where a bad value came from."""

    source: str
    values: dict


def read_yaml_mapping(path: Path, what: str = "Config file") -> dict:
    """Read a YAML file that must hold a mapping of sections, and at least one.

    An empty file (or one of comments only) is refused: it would run silently with every default, which
    is never what a user who wrote or named it meant.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder, not a YAML file.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a YAML file (it is not text).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}.") from None
    if data is None or data == {}:
        raise ConfigError(
            f"{what} {path} is empty: it sets nothing, so the run would silently use every default.",
            hint="Write its sections (run:, env:, model:, ...; `vlmppo presets copy NAME` gives a full one to "
            "edit), or leave the option out.",
        )
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
        layers.append(Layer(f"preset {path}", read_yaml_mapping(path, "Preset")))
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
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]  # an item of a list value (e.g. eval.seeds.0)
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


def _key_loc(loc: tuple) -> tuple:
    """``loc`` without the branch tags pydantic inserts after a union field ("list[str]",
    "literal['all-linear']", a model's class name, ...): walk the schema, and after a field whose type is a
    union of two or more non-None types skip the next part (the tag)."""
    model: type[BaseModel] | None = Config
    kept: list = []
    union_args: tuple = ()
    for part in loc:
        if union_args and isinstance(part, str):
            model = next((c for c in union_args if isinstance(c, type) and c.__name__ == part), None)
            model = model if model is not None and issubclass(model, BaseModel) else None
            union_args = ()
            continue
        kept.append(part)
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            model, union_args = None, ()
            continue
        args = typing.get_args(field.annotation)
        is_union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        union_args = args if is_union and sum(a is not type(None) for a in args) > 1 else ()
        model = next(
            (c for c in (field.annotation, *args) if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return tuple(kept)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _describe_errors(exc: ValidationError, layers: list[Layer]) -> str:
    problems: list[str] = []
    by_key: dict[tuple, int] = {}  # one line per key: a value no union branch accepts lists every branch
    for err in exc.errors():
        loc = _key_loc(err["loc"])
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
        elif loc in by_key:
            problems[by_key[loc]] = problems[by_key[loc]].replace(
                " (got ", f", or {_lower_first(err['msg'])} (got ", 1
            )
        else:
            given = err.get("input")
            shown = f" (got {given!r})" if not isinstance(given, dict) else ""
            by_key[loc] = len(problems)
            problems.append(f"'{key}': {err['msg']}{shown} (from {source}).")
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"Invalid configuration, {count}:\n  - " + "\n  - ".join(problems)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, in schema order (what ``--dry-run`` prints and runs save)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def run_dir(cfg: Config) -> Path:
    """The run's output folder, ``<run.output_dir>/<run.name>``."""
    return Path(cfg.run.output_dir) / cfg.run.name
