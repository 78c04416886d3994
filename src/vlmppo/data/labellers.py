"""Labellers: who writes the SFT targets (action mode) or rates transitions (score mode).

- ``expert``: replays each recorded episode from its seed and asks the env's expert (exact, instant).
- ``hf``: a local VLM, batched, greedy by default.
- ``openai``: any OpenAI-compatible chat server, with bounded concurrency and retries.

Model labellers share the prompts and the answer parsing below; an answer that does not parse is kept
with ``status: parse_error`` rather than stopping the run.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

SCORE_RUBRIC = """You see two frames of an agent acting in an environment: BEFORE (left) and AFTER (right) the action.
Task: {task}
Action taken: "{action}"
Rate how useful this action was for the task, from 0 to 10:
10 = it finishes the task or makes the key interaction (e.g. picks up the key, opens the door);
8-9 = clear progress toward the goal; 5-7 = minor progress; 1-2 = neutral; 0 = counter-productive.
Answer in JSON: {{"score": <0-10>, "reason": "<one sentence>"}}"""

_SCORE = re.compile(r"""["']?score["']?\s*:\s*["']?(\d+(?:\.\d+)?)""", re.IGNORECASE)
_REASON = re.compile(r"""["']?reason["']?\s*:\s*["']((?:[^"'\\]|\\.)*)["']""", re.IGNORECASE | re.DOTALL)


def parse_score(text: str) -> tuple[int | None, str | None]:
    """``{"score": 7, "reason": "..."}`` (tolerant of fences and quotes) → (score clamped to 0..10, reason)."""
    match = _SCORE.search(text or "")
    if not match:
        return None, None
    score = int(round(float(match.group(1))))
    if not 0 <= score <= 10:
        return None, None
    reason = _REASON.search(text)
    return score, reason.group(1) if reason else None


def side_by_side(before: Image.Image, after: Image.Image) -> Image.Image:
    """One image holding both frames, for model labellers that take a single image per prompt."""
    width, height = before.width + after.width, max(before.height, after.height)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(before.convert("RGB"), (0, 0))
    canvas.paste(after.convert("RGB"), (before.width, 0))
    return canvas


def task_text(adapter, state: dict) -> str:
    """The task part of our env prompt (whatever the prompt style), for the score rubric."""
    return adapter.task_text(state).strip()


def label_row(key: dict, labeller: str, mode: str, raw: str | None, adapter, rng, **fields) -> dict:
    """A labels.jsonl line; model answers are parsed here so every labeller is judged alike."""
    row = {**key, "labeller": labeller, "mode": mode, "raw": raw, **fields}
    if labeller == "expert" or raw is None:
        return row
    if mode == "action":
        parsed = adapter.parse(raw, rng)
        ok = not parsed.invalid
        row.update(
            status="ok" if ok else "parse_error",
            action_index=parsed.index if ok else None,
            action=adapter.legal_actions[parsed.index] if ok else None,
            thoughts=parsed.thoughts if ok else None,
        )
    else:
        score, reason = parse_score(raw)
        row.update(status="ok" if score is not None else "parse_error", score=score, reason=reason)
    return row


class ModelLabeller:
    """Shared by the hf and openai labellers: build the (images, text) of a step, then ask in batches."""

    def __init__(self, adapter, mode: str, rng: np.random.Generator):
        self.adapter, self.mode, self.rng = adapter, mode, rng

    def request(self, step: dict, frame: Image.Image, next_frame: Image.Image | None) -> tuple[list, str]:
        if self.mode == "action":
            return [frame], step["prompt"]
        text = SCORE_RUBRIC.format(task=task_text(self.adapter, step["state"]), action=step["action_text"])
        return [side_by_side(frame, next_frame)], text


class HfLabeller(ModelLabeller):
    name = "hf"

    def __init__(self, generator, adapter, mode, rng, *, temperature: float, max_new_tokens: int):
        super().__init__(adapter, mode, rng)
        self.generator, self.temperature, self.max_new_tokens = generator, temperature, max_new_tokens

    def answer(self, requests: list[tuple[list, str]]) -> list[str]:
        images = [np.asarray(imgs[0].convert("RGB")) for imgs, _ in requests]
        texts = [text for _, text in requests]
        return self.generator.generate_text(
            images, texts, temperature=self.temperature, max_new_tokens=self.max_new_tokens
        )


class OpenAILabeller(ModelLabeller):
    name = "openai"

    def __init__(self, client, adapter, mode, rng, *, temperature, max_new_tokens, max_concurrency):
        super().__init__(adapter, mode, rng)
        self.client, self.temperature, self.max_new_tokens = client, temperature, max_new_tokens
        self.max_concurrency = max_concurrency

    def answer(self, requests: list[tuple[list, str]]) -> list[str]:
        def ask(req):
            images, text = req
            return self.client.complete(
                text, images, max_tokens=self.max_new_tokens, temperature=self.temperature
            )

        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = [pool.submit(ask, req) for req in requests]
            try:
                return [f.result() for f in futures]
            except BaseException:
                # A failed request (after its retries) ends the run: don't send the rest of the batch.
                for f in futures:
                    f.cancel()
                raise


def expert_action_fields(adapter, env, info) -> dict:
    expert = adapter.expert(env, info)
    if expert.index is None:
        return {
            "status": "expert_stuck",
            "raw": None,
            "action_index": None,
            "action": None,
            "thoughts": expert.reasoning,
        }
    return {
        "status": "ok",
        "raw": adapter.format_answer(expert.index, expert.reasoning, info),
        "action_index": expert.index,
        "action": adapter.legal_actions[expert.index],
        "thoughts": expert.reasoning,
    }


def expert_score_fields(adapter, state_before, action, state_after, reward) -> dict:
    score, reason = adapter.expert_score(state_before, action, state_after, reward)
    return {
        "status": "ok",
        "raw": json.dumps({"score": score, "reason": reason}),
        "score": int(score),
        "reason": reason,
    }
