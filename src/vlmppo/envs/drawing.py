"""Pillow drawing for the card envs: text, playing cards (rank + suit symbol), face-down cards.

No font or image file is read from outside the package: text uses Pillow's scalable default font
(``ImageFont.load_default(size=...)``, Pillow >= 10.1) and suit symbols are drawn as shapes, because the
default font has no suit glyphs. Frames are returned as uint8 arrays and never pass through floats.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FELT = (30, 110, 60)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
RED = (200, 20, 30)
CARD_BACK = (40, 70, 160)
SUITS = ("spades", "hearts", "diamonds", "clubs")
RANK_NAMES = {1: "A", 11: "J", 12: "Q", 13: "K"}


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font at ``size`` pixels (cached: loading it costs ~1 ms)."""
    return ImageFont.load_default(size=size)


def rank_name(rank: int) -> str:
    """Rank 1-13 as printed on the card: A, 2-10, J, Q, K."""
    return RANK_NAMES.get(rank, str(rank))


def canvas(width: int, height: int, color: tuple[int, int, int]) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (width, height), color)
    return image, ImageDraw.Draw(image)


def to_array(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 copy of a PIL image (a fresh buffer each call, so returned frames are never shared)."""
    return np.array(image, dtype=np.uint8)


def text_centered(draw: ImageDraw.ImageDraw, cx: float, y: float, text: str, size: int, fill) -> None:
    """Draws ``text`` horizontally centred on ``cx`` with its top at ``y``."""
    draw.text((cx, y), text, font=font(size), fill=fill, anchor="ma")


def wrap_text(text: str, size: int, width: int) -> list[str]:
    """Lines of at most ``width`` pixels, breaking at spaces and newlines; words longer than a line are cut
    (model output can be one long run of characters without spaces)."""
    f = font(size)
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split(" "):
            while f.getlength(word) > width:  # cut an over-long word at the widest prefix that fits
                cut = 1
                while cut < len(word) and f.getlength(word[: cut + 1]) <= width:
                    cut += 1
                if current:
                    lines.append(current)
                    current = ""
                lines.append(word[:cut])
                word = word[cut:]
            candidate = f"{current} {word}" if current else word
            if current and f.getlength(candidate) > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return lines


def draw_suit(draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, suit: str) -> None:
    """Draws a suit symbol of half-height ``s`` centred on (cx, cy)."""
    color = RED if suit in ("hearts", "diamonds") else BLACK
    r = s * 0.52
    if suit == "diamonds":
        draw.polygon([(cx, cy - s), (cx + 0.72 * s, cy), (cx, cy + s), (cx - 0.72 * s, cy)], fill=color)
    elif suit == "hearts":
        for dx in (-r, r):
            draw.ellipse([cx + dx - r, cy - s, cx + dx + r, cy - s + 2 * r], fill=color)
        draw.polygon(
            [(cx - 2 * r + 0.3, cy - s + r * 1.25), (cx + 2 * r - 0.3, cy - s + r * 1.25), (cx, cy + s)],
            fill=color,
        )
    elif suit == "spades":
        for dx in (-r, r):
            draw.ellipse([cx + dx - r, cy + 0.45 * s - 2 * r, cx + dx + r, cy + 0.45 * s], fill=color)
        draw.polygon(
            [
                (cx - 2 * r + 0.3, cy + 0.45 * s - r * 1.25),
                (cx + 2 * r - 0.3, cy + 0.45 * s - r * 1.25),
                (cx, cy - s),
            ],
            fill=color,
        )
        draw.polygon([(cx, cy + 0.1 * s), (cx - 0.4 * s, cy + s), (cx + 0.4 * s, cy + s)], fill=color)
    else:  # clubs: three leaves and a stem
        lr = s * 0.42
        for dx, dy in ((0, -s + lr), (-0.95 * lr, 0.05 * s), (0.95 * lr, 0.05 * s)):
            draw.ellipse([cx + dx - lr, cy + dy - lr, cx + dx + lr, cy + dy + lr], fill=color)
        draw.polygon([(cx, cy - 0.2 * s), (cx - 0.4 * s, cy + s), (cx + 0.4 * s, cy + s)], fill=color)


def draw_card(image: Image.Image, box: tuple[int, int, int, int], rank: int | None, suit: str | None) -> None:
    """Draws a playing card in ``box`` (x0, y0, x1, y1): white, a large rank at the top and a suit symbol
    below it, red for hearts/diamonds; ``rank=None`` draws the card face down."""
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    radius = max(3, w // 10)
    if rank is None:
        draw.rounded_rectangle(box, radius=radius, fill=WHITE, outline=(90, 90, 90), width=1)
        inset = max(3, w // 12)
        # A lattice on the back, so a face-down card never reads as blank; drawn on its own tile so no
        # line can stray outside the card.
        back = Image.new("RGB", (w - 2 * inset, h - 2 * inset), CARD_BACK)
        pen = ImageDraw.Draw(back)
        step = max(6, w // 6)
        for k in range(-back.height, back.width, step):
            pen.line([(k, 0), (k + back.height, back.height)], fill=(120, 150, 220), width=1)
            pen.line([(k + back.height, 0), (k, back.height)], fill=(120, 150, 220), width=1)
        image.paste(back, (x0 + inset, y0 + inset))
        return
    assert suit is not None
    color = RED if suit in ("hearts", "diamonds") else BLACK
    draw.rounded_rectangle(box, radius=radius, fill=WHITE, outline=(90, 90, 90), width=1)
    size = int(min(h * 0.36, w * 0.5))
    label = rank_name(rank)
    draw.text((x0 + w * 0.5, y0 + h * 0.07), label, font=font(size), fill=color, anchor="ma")
    draw_suit(draw, x0 + w * 0.5, y0 + h * 0.70, min(w * 0.28, h * 0.19), suit)
