"""The RL4VLM prompt style: the paper's answer format and its way of reading the action.

RL4VLM (``VLM_PPO/a2c_ppo_acktr/rl_utils.py``) asked each gym-cards task for a JSON answer with task
fields before the thoughts (NumberLine ``"current number"``, ``"target number"``; EZPoints and Points24
``"cards"``, ``"current formula"``), and read the action back without parsing JSON at all:

1. lower-case the answer and cut it at the first ``"action":``; where that key is missing, keep only the
   answer's last character;
2. in EZPoints/Points24, take ``"10"`` out first (so that it is not also read as ``"1"``);
3. the answer is that action if exactly one legal action string occurs in the rest, else a random one.

``find_action`` is that rule (the random pick flagged ``invalid``); ``prompt`` and ``answer`` write the
format. The task texts themselves live in each adapter's ``rl4vlm_task``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from vlmppo.envs.parsing import ParsedAction, scan_pairs

ACTION_KEY = '"action":'


@dataclass(frozen=True)
class Field:
    """One JSON field of the answer format.

    Attributes:
        key: The field name, e.g. ``"current formula"``.
        placeholder: What the prompt shows as its value (JSON text, e.g. ``"x"`` with the quotes).
        value: Its true value in the state at hand (JSON-ready), written by experts.
    """

    key: str
    placeholder: str
    value: object


def prompt(task: str, fields: list[Field], thoughts_hint: str | None, action_hint: str) -> str:
    """The task text followed by the answer format as a JSON skeleton.

    Args:
        task: The task description (the adapter's ``rl4vlm_task``).
        fields: Task fields before the thoughts; empty for the action-only variant.
        thoughts_hint: The thoughts placeholder; None for the action-only variant.
        action_hint: The action placeholder, e.g. ``"-" or "+"``.
    """
    lines = [f'  "{f.key}": {f.placeholder},' for f in fields]
    if thoughts_hint is not None:
        lines.append(f'  "thoughts": "{{{thoughts_hint}}}",')
    lines.append(f'  "action": {action_hint}')
    body = "\n".join(lines)
    return f"{task.strip()}\nYour answer must be a valid JSON object in this format:\n{{\n{body}\n}}"


def answer(fields: list[Field], thoughts: str | None, action: str) -> str:
    """An answer in the format: the fields' true values, the thoughts (if any), then the action."""
    payload: dict[str, object] = {f.key: f.value for f in fields}
    if thoughts is not None:
        payload["thoughts"] = thoughts
    payload["action"] = action
    return json.dumps(payload, ensure_ascii=False)


def _lower_same_length(text: str) -> str:
    # str.lower() can lengthen a few non-ASCII characters; offsets must stay those of ``text``. ASCII text
    # lowers character for character (and is most answers: the per-character loop cost ~0.1 ms each).
    if text.isascii():
        return text.lower()
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def find_action(
    text: str, legal_actions: list[str], rng: np.random.Generator, *, tens_first: bool = False
) -> ParsedAction:
    """RL4VLM's reading of an answer (see the module docstring).

    Args:
        text: The generated answer.
        legal_actions: The env's action strings (lower case, as in gym-cards).
        rng: Source of the random action when none or several are found.
        tens_first: EZPoints/Points24: look for "10" before the other actions.

    Returns:
        A ParsedAction. ``span`` covers the first occurrence of the found action after ``"action":``;
        ``thoughts`` is the ``"thoughts"`` value where the answer has one.
    """
    lowered = _lower_same_length(text)
    key = lowered.find(ACTION_KEY)
    start = key if key >= 0 else max(len(text) - 1, 0)
    rest = lowered[start:]
    found = []
    searched = rest
    if tens_first and "10" in rest:
        found.append("10")
        searched = rest.replace("10", "")
    found += [a for a in legal_actions if a in searched]
    thoughts = next((p.value for p in scan_pairs(text) if p.key == "thoughts"), None)
    if len(set(found)) == 1:
        action = found[0]
        offset = start + rest.index(action)
        return ParsedAction(legal_actions.index(action), False, (offset, offset + len(action)), thoughts)
    return ParsedAction(int(rng.integers(len(legal_actions))), True, None, thoughts)
