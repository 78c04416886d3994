"""The model card (``README.md``) of an exported checkpoint, written from its run's record (``record.py``).

A pure function of the record, so that every line can be tested without a model: the Hub metadata block, what
the model is, how it scored beside the baselines, how to load it, the pipeline that made it and the commands
that reproduce it, and the frames of one evaluated episode.
"""

from __future__ import annotations

import json

_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./")


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` looks like a Hub model id (``org/name``), not a local folder or a tiny model."""
    return (
        bool(name)
        and name.count("/") == 1
        and not name.startswith((".", "/", "~"))
        and set(name) <= _HUB_ID_CHARS
    )


def _percent(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _interval(ci) -> str:
    return (
        f"{100 * ci[0]:.1f}% - {100 * ci[1]:.1f}%" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "-"
    )


def _front_matter(record: dict, merged: bool) -> list[str]:
    tags = ["vlmppo", "reinforcement-learning", "vision-language-model", "agent"]
    env_id = (record.get("env") or {}).get("id")
    lines = ["---", f"library_name: {'transformers' if merged or not record.get('lora') else 'peft'}"]
    if is_hub_id(record.get("base_model")):
        lines.append(f"base_model: {record['base_model']}")
    lines.append("pipeline_tag: image-text-to-text")
    lines.append("tags:")
    lines += [f"- {tag}" for tag in tags + ([json.dumps(env_id)] if env_id else [])]
    return [*lines, "---", ""]


def _results(record: dict) -> list[str]:
    agent, baselines = record.get("evaluation"), record.get("baselines") or []
    if agent is None:
        return [
            "## Evaluation",
            "",
            "This checkpoint was not evaluated in its run (`vlmppo eval --ckpt ...`).",
            "",
        ]
    lines = [
        "## Evaluation",
        "",
        f"Success rate on `{record['env'].get('id')}` over {agent.get('episodes')} episodes "
        f"({agent.get('decoding', 'greedy')} decoding, seeds {agent.get('seeds')}), with the 95% Wilson interval:",
        "",
        "| policy | episodes | success | 95% CI | solved | mean return |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in [
        (f"**this model** ({agent['name']})", agent),
        *[(f"{b['name']} (baseline)", b) for b in baselines],
    ]:
        ret = row.get("return_mean")
        lines.append(
            f"| {name} | {row.get('episodes')} | {_percent(row.get('success_rate'))} | "
            f"{_interval(row.get('success_ci95'))} | {_percent(row.get('solved_rate'))} | "
            f"{'-' if ret is None else f'{ret:.3f}'} |"
        )
    return [*lines, ""]


def _usage(record: dict, merged: bool) -> list[str]:
    base = record.get("base_model") or "BASE_MODEL"
    if merged or not record.get("lora"):
        code = ["from transformers import AutoModelForImageTextToText, AutoProcessor", "",
                'model = AutoModelForImageTextToText.from_pretrained("THIS_FOLDER")',
                'processor = AutoProcessor.from_pretrained("THIS_FOLDER")']  # fmt: skip
    else:
        code = ["from peft import PeftModel", "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
                f'base = AutoModelForImageTextToText.from_pretrained("{base}")',
                'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
                'processor = AutoProcessor.from_pretrained("THIS_FOLDER")']  # fmt: skip
    return ["## How to load it", "", "```python", *code, "```", "",
            "The prompt format it was trained on is in `vlmppo/config.yaml` (`env.prompt`); "
            "`vlmppo eval --ckpt THIS_FOLDER --config vlmppo/config.yaml` plays it again.", ""]  # fmt: skip


def _pipeline(record: dict) -> list[str]:
    stages = record.get("stages") or []
    if not stages:
        return []
    lines = ["## How it was trained", "", "| stage | what | when | time |", "|---|---|---|---|"]
    for stage in stages:
        counts = stage.get("counts") or {}
        what = ", ".join(f"{k} {v}" for k, v in counts.items())
        if stage.get("checkpoint"):
            what = f"checkpoint {stage['checkpoint']}" + (" (this model)" if stage.get("exported") else "") + (
                f": {what}" if what else "")  # fmt: skip
        for key in ("policy", "labeller"):
            if stage.get(key):
                what = f"{key} {stage[key]}; {what}"
        seconds = stage.get("seconds")
        lines.append(f"| {stage['stage']} | {what or '-'} | {stage.get('created') or '-'} | "
                     f"{'-' if seconds is None else f'{seconds:.0f} s'} |")  # fmt: skip
    lines += [
        "",
        "Each stage's manifest (config, inputs with their SHA-256, versions) is in `vlmppo/record.json`.",
        "",
    ]
    commands = record.get("commands") or []
    lines += ["## How to reproduce it", ""]
    if commands:
        lines += [
            "With [vlmppo](https://github.com/vlmppo/vlmppo) installed:",
            "",
            "```bash",
            *commands,
            "```",
            "",
        ]
    else:
        lines += ["`vlmppo pipeline --config vlmppo/config.yaml` (the run's resolved config).", ""]
    return lines


def render_card(record: dict, *, merged: bool = False, frames: list[str] = ()) -> str:
    """The README.md of an exported checkpoint.

    Args:
        record: From ``read_record``.
        merged: Whether the folder holds the merged model (else the adapter, when the run trained LoRA).
        frames: Paths, relative to the folder, of the episode pictures to show (a frame strip, a GIF).
    """
    env = record.get("env") or {}
    env_text = f"`{env.get('id')}`" + (f" (adapter `{env['adapter']}`)" if env.get("adapter") else "")
    what = "the merged model" if merged else ("a LoRA adapter" if record.get("lora") else "the full model")
    counts = ", ".join(f"{k} {v}" for k, v in (record.get("counts") or {}).items())
    lines = [
        *_front_matter(record, merged),
        f"# {record.get('run') or 'vlmppo agent'}: a VLM agent for {env.get('id')}",
        "",
    ]
    lines += [
        f"This folder holds {what} trained with vlmppo ({record.get('stage') or 'training'} stage"
        f"{', ' + counts if counts else ''}).",
        "",
        f"- **Base model:** `{record.get('base_model')}` ({record.get('family')})",
        f"- **Environment:** {env_text}, prompt style `{env.get('prompt', 'cot')}`",
        f"- **Preset:** `{record.get('preset') or 'none (a config file)'}`",
        f"- **vlmppo:** {(record.get('versions') or {}).get('vlmppo', '?')}"
        + (f", git {record['git_sha'][:12]}" if record.get("git_sha") else ""),
        "",
    ]
    lines += _results(record)
    if frames:
        lines += ["## One evaluated episode", "", *[f"![episode]({f})" for f in frames], ""]
    lines += _usage(record, merged) + _pipeline(record)
    return "\n".join(lines).rstrip() + "\n"
