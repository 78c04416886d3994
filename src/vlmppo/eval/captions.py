"""Captioned trajectories: each frame the agent saw, with its thoughts, action and reward under it.

One episode becomes ``<name>.gif`` (one frame per observation: ``steps + 1`` frames, the last one the
final observation with the outcome) and ``<name>.png`` (the same panels in a grid). Every panel has a
border, green for a successful episode and red for a failed one. Small frames (64 px probes, 48 px
MiniGrid renders) are scaled up with nearest-neighbour so their pixels stay sharp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlmppo.envs.drawing import font, wrap_text

FRAME = 256  # the frame's longer side in a panel, in pixels
PAD = 10
BORDER = 6
TEXT = 15  # caption font size: legible at 100% zoom
HEAD = 17
LINE = 19  # caption line height
MAX_THOUGHT_LINES = 9
COLUMNS = 5
MAX_PANELS = 30
GREEN = (20, 150, 40)
RED = (200, 30, 30)
INK = (20, 20, 20)
MUTED = (110, 110, 110)


@dataclass
class Trajectory:
    """Files of one captioned episode, relative to the eval folder, and what they show."""

    name: str
    gif: str
    png: str
    frames: int
    steps: int
    success: bool
    ret: float
    seed: int


def printable(text: str) -> str:
    """Model output as drawable text: control characters and undecodable bytes become "?"."""
    return "".join(ch if ch.isprintable() and ch != "\ufffd" else "?" for ch in " ".join(text.split()))


def _scaled(frame: np.ndarray) -> Image.Image:
    image = Image.fromarray(np.asarray(frame, dtype=np.uint8)).convert("RGB")
    longer = max(image.size)
    if longer < FRAME:
        factor = max(1, FRAME // longer)
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    scale = FRAME / longer
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)


def _caption(row: dict | None, episode: dict, step: int) -> tuple[str, list[tuple[str, tuple]]]:
    """(header, [(line text, colour)]) for the panel of ``step``; ``row`` None for the final frame."""
    width = FRAME
    if row is None:
        outcome = "SUCCESS" if episode["success"] else "FAILURE"
        return (
            f"end: {outcome}",
            [(f"return {episode['return']:+g} in {episode['length']} steps", INK)],
        )
    action = f"action: {row['action']}"
    if row["invalid"]:
        action += "  (invalid answer: random action)"
    lines = [(line, INK) for line in wrap_text(action, TEXT, width)]
    lines.append(
        (
            f"reward: {row['reward']:+g}"
            + (f"   value: {row['value']:.2f}" if row.get("value") is not None else ""),
            INK,
        )
    )
    if row.get("thoughts"):
        body, label = row["thoughts"], "thoughts: "
    elif row.get("answer") is not None:
        body, label = row["answer"], "answer: "
    else:
        body, label = "", ""
    if label:
        wrapped = wrap_text(label + printable(body), TEXT, width)
        if len(wrapped) > MAX_THOUGHT_LINES:
            wrapped = [*wrapped[: MAX_THOUGHT_LINES - 1], wrapped[MAX_THOUGHT_LINES - 1][:-3] + "..."]
        lines += [(line, MUTED) for line in wrapped]
    return f"step {step}", lines


def _panel(frame, caption, height: int, success: bool) -> Image.Image:
    header, lines = caption
    image = _scaled(frame)
    width = FRAME + 2 * (PAD + BORDER)
    panel = Image.new("RGB", (width, height), GREEN if success else RED)
    inner = Image.new("RGB", (width - 2 * BORDER, height - 2 * BORDER), (255, 255, 255))
    inner.paste(image, (PAD + (FRAME - image.width) // 2, PAD))
    draw = ImageDraw.Draw(inner)
    y = PAD + FRAME + 8
    draw.text((PAD, y), header, font=font(HEAD), fill=INK)
    y += HEAD + 6
    for text, colour in lines:
        draw.text((PAD, y), text, font=font(TEXT), fill=colour)
        y += LINE
    panel.paste(inner, (BORDER, BORDER))
    return panel


def _panel_height(captions) -> int:
    most = max(len(lines) for _, lines in captions)
    return 2 * BORDER + PAD + FRAME + 8 + HEAD + 6 + most * LINE + PAD


def write_trajectory(folder: Path, name: str, frames: list, rows: list[dict], episode: dict) -> Trajectory:
    """Write ``folder/name.gif`` and ``folder/name.png`` for one episode.

    Args:
        frames: ``len(rows) + 1`` observations (uint8 ``[H, W, 3]``): before each step, then the final one.
        rows: The episode's step records (``action, invalid, reward, value, thoughts, answer``).
        episode: ``return, length, success, seed``.

    Returns:
        The files written, relative to ``folder``'s parent.
    """
    if len(frames) != len(rows) + 1:
        raise ValueError(f"expected {len(rows) + 1} frames for {len(rows)} steps, got {len(frames)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    captions = [_caption(row, episode, t) for t, row in enumerate(rows)] + [
        _caption(None, episode, len(rows))
    ]
    height = _panel_height(captions)
    panels = [_panel(f, c, height, episode["success"]) for f, c in zip(frames, captions, strict=True)]

    gif = folder / f"{name}.gif"
    durations = [900] * (len(panels) - 1) + [2000]
    tmp = gif.with_name(f".{gif.name}.tmp")
    # Each panel carries its step number, so no two consecutive frames are equal and Pillow keeps them all.
    panels[0].save(
        tmp, format="GIF", save_all=True, append_images=panels[1:], duration=durations, loop=0, optimize=False
    )
    tmp.replace(gif)

    shown = panels if len(panels) <= MAX_PANELS else [*panels[: MAX_PANELS - 1], panels[-1]]
    title = (
        f"{name}: {'success' if episode['success'] else 'failure'}, return {episode['return']:+g}, "
        f"{len(rows)} steps (eval seed {episode['seed']})"
    )
    if len(shown) < len(panels):
        title += f"; steps {MAX_PANELS - 1}-{len(rows) - 1} not shown (see the GIF)"
    columns = min(COLUMNS, len(shown))
    grid_rows = -(-len(shown) // columns)
    pw, ph = shown[0].size
    strip = Image.new("RGB", (columns * pw, 34 + grid_rows * ph), (255, 255, 255))
    ImageDraw.Draw(strip).text((8, 8), title, font=font(HEAD), fill=INK)
    for i, panel in enumerate(shown):
        strip.paste(panel, ((i % columns) * pw, 34 + (i // columns) * ph))
    png = folder / f"{name}.png"
    tmp = png.with_name(f".{png.name}.tmp")
    strip.save(tmp, format="PNG")
    tmp.replace(png)
    rel = folder.name
    return Trajectory(
        name=name,
        gif=f"{rel}/{gif.name}",
        png=f"{rel}/{png.name}",
        frames=len(panels),
        steps=len(rows),
        success=bool(episode["success"]),
        ret=float(episode["return"]),
        seed=int(episode["seed"]),
    )
