"""From a model's answer text to an env action, and back.

Every adapter uses the same rules, so that a change here changes all envs at once:

* The answer is expected to be a JSON object ``{"thoughts": "...", "action": "..."}``. We do not call
  ``json.loads``: small models write fenced blocks, prose around the object, single quotes, trailing
  commas and unquoted numbers, and we still want the action out of those. Instead a small scanner walks
  the text, reads string literals atomically (so an ``"action"`` written *inside* the thoughts is never
  taken for a key) and records every ``key: value`` pair it sees inside braces.
* The ``"action"`` value must equal one legal action string, case-insensitively and whole ("10" is not
  "1"; internal runs of spaces count as one space).
* No action key, an illegal value, or two action keys with different values is *invalid*: a random legal
  action is drawn from the caller's generator (the env's RNG keeps runs reproducible) and flagged.
* The character span of the value in the original text is returned, because PPO maps it to the tokens of
  the action (DESIGN.md §7); it is ``None`` when the answer is invalid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_ ]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True)
class ParsedAction:
    """What the parser read from one answer.

    Attributes:
        index: Index into the adapter's ``legal_actions`` (always a legal index, random when invalid).
        invalid: True when the answer named no single legal action.
        span: ``(start, end)`` character offsets of the action value in the answer text, ``text[start:end]``
            being the value without quotes or surrounding spaces; None when invalid.
        thoughts: The ``"thoughts"`` value, or None when the answer has none.
    """

    index: int
    invalid: bool
    span: tuple[int, int] | None
    thoughts: str | None


@dataclass(frozen=True)
class ExpertAction:
    """The expert's choice for one state.

    Attributes:
        index: Index into ``legal_actions``, or None when the expert cannot act (the state cannot reach
            success any more, or no expert exists for this task); ``reasoning`` then says why.
        reasoning: A short templated explanation, used as the thoughts of an SFT target.
    """

    index: int | None
    reasoning: str


@dataclass(frozen=True)
class _Pair:
    key: str
    value: str
    span: tuple[int, int]


def normalize_action(text: str) -> str:
    """Lower-case and collapse whitespace, the only tolerance granted when matching action strings."""
    return " ".join(text.split()).lower()


def _read_string(text: str, start: int) -> tuple[str, int, int, int]:
    """Reads the string literal whose quote is at ``start``.

    Returns:
        (decoded value, raw content start, raw content end, index after the closing quote). An unclosed
        string runs to the end of the text (answers are often cut by ``max_new_tokens``).
    """
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == quote:
            return "".join(out), start + 1, i, i + 1
        out.append(ch)
        i += 1
    return "".join(out), start + 1, len(text), len(text)


def _read_bare(text: str, start: int) -> tuple[str, int, int, int]:
    """Reads an unquoted value (``10``, ``+``) up to the next comma, brace, bracket or line end."""
    end = start
    while end < len(text) and text[end] not in ",}]\n":
        end += 1
    return text[start:end], start, end, end


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def scan_pairs(text: str) -> list[_Pair]:
    """Finds every ``key: value`` pair written inside braces, in order of appearance.

    Quotes outside braces are prose (an apostrophe in "don't" must not open a string); inside braces,
    single- and double-quoted strings are read whole, and bare identifiers followed by ``:`` count as keys.
    """
    pairs: list[_Pair] = []
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
            i += 1
            continue
        if ch == "}":
            depth = max(0, depth - 1)
            i += 1
            continue
        if depth == 0:
            i += 1
            continue
        if ch in "\"'":
            key, _, _, after = _read_string(text, i)
        elif (bare := _BARE_KEY.match(text, i)) is not None:
            key, after = bare.group(0).strip(), bare.end()
        else:
            i += 1
            continue
        colon = _skip_space(text, after)
        if colon >= len(text) or text[colon] != ":":
            i = after  # a string value or stray word, not a key
            continue
        vstart = _skip_space(text, colon + 1)
        if vstart < len(text) and text[vstart] in "\"'":
            value, s, e, i = _read_string(text, vstart)
        elif vstart < len(text) and text[vstart] in "{[":
            i = vstart  # nested container: its own keys are scanned next
            continue
        else:
            value, s, e, i = _read_bare(text, vstart)
        s, e = _strip_span(text, s, e)
        pairs.append(_Pair(key.strip().lower(), value, (s, e)))
    return pairs


def parse_action(text: str, legal_actions: list[str], rng: np.random.Generator) -> ParsedAction:
    """Reads the action (and thoughts) from a model's answer.

    Args:
        text: The generated answer (no prompt).
        legal_actions: The env's action strings; the returned index points into this list.
        rng: Source of the random fallback action for invalid answers (pass the env's RNG).

    Returns:
        A ParsedAction; ``invalid`` is True, ``span`` None and ``index`` random when the answer has no
        ``"action"`` key, an illegal value, or several action keys that disagree.
    """
    pairs = scan_pairs(text)
    thoughts = next((p.value for p in pairs if p.key == "thoughts"), None)
    actions = [p for p in pairs if p.key == "action"]
    lookup = {normalize_action(a): i for i, a in enumerate(legal_actions)}
    values = {normalize_action(p.value) for p in actions}
    if len(values) == 1:
        index = lookup.get(values.pop())
        if index is not None:
            return ParsedAction(index=index, invalid=False, span=actions[0].span, thoughts=thoughts)
    index = int(rng.integers(len(legal_actions)))
    return ParsedAction(index=index, invalid=True, span=None, thoughts=thoughts)


def format_answer(action: str, thoughts: str | None) -> str:
    """The canonical answer string: ``{"thoughts": ..., "action": ...}``, or ``{"action": ...}`` when
    ``thoughts`` is None (the action-only prompt). Non-ASCII text is kept readable, not escaped."""
    payload = {"action": action} if thoughts is None else {"thoughts": thoughts, "action": action}
    return json.dumps(payload, ensure_ascii=False)
