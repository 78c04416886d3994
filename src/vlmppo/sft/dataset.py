"""The SFT dataset (``messages + images`` JSONL from `vlmppo preprocess`) and its collator.

Images are checked when the file is loaded (exists and decodes, via PIL ``verify``), so a bad dataset
fails before training starts; the pixels are decoded again lazily, in the collator. Tokenization,
chat template and labels come from `vlmppo.models.inputs.build_inputs` (labels = -100 except the
answer tokens and the end-of-turn token).

An example made with ``env.history: K`` holds up to K earlier turns before its own: a user turn with only
that step's frame and an assistant turn with its answer each, one image per user turn in order. They are
the context the model will see in PPO and eval; the loss is on the last answer only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlmppo.errors import DataError
from vlmppo.models.inputs import IGNORE_INDEX, Turn, build_inputs
from vlmppo.sft.collate_cache import CollateCache, merge

if TYPE_CHECKING:
    from transformers import BatchFeature

    from vlmppo.models.loading import LoadedModel


@dataclass(frozen=True)
class SftExample:
    prompt: str
    answer: str
    image: Path  # absolute (resolved against the JSONL file's folder)
    source: str = ""  # "file:line", for messages
    history: tuple[tuple[Path, str], ...] = ()  # earlier turns: (frame, answer), oldest first

    @property
    def approx_length(self) -> int:
        """A cheap length proxy (characters of text) for length grouping."""
        return len(self.prompt) + len(self.answer) + sum(len(answer) for _, answer in self.history)


def _text_of(turn: dict) -> str:
    content = turn.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text")


def load_sft_examples(path) -> list[SftExample]:
    """Read a preprocessed SFT JSONL file.

    Raises:
        DataError: Missing file, invalid JSON, no user/assistant turn, no image, a missing image file or
            one that does not decode (each naming file and line), or an empty dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SFT dataset {path} does not exist.", hint="Run `vlmppo preprocess` first.")
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"a JSON {type(row).__name__}, not an object")
            except ValueError as exc:
                raise DataError(f"{where}: not a valid JSON object ({str(exc).splitlines()[0]}).") from None
            user, assistant, earlier = _turns(row.get("messages") or [], where)
            images = row.get("images") or []
            if len(images) != 1 + len(earlier):
                raise DataError(
                    f"{where}: expected {1 + len(earlier)} image(s) in 'images' (one per user turn), "
                    f"got {len(images)}."
                )
            frames = [_checked_image(path.parent / name, where) for name in images]
            history = tuple((frame, answer) for frame, answer in zip(frames, earlier, strict=False))
            examples.append(
                SftExample(_text_of(user), _text_of(assistant), frames[-1], f"{path}:{number}", history)
            )
    if not examples:
        raise DataError(
            f"SFT dataset {path} is empty.", hint="Check the preprocess filters and run it again."
        )
    return examples


def _turns(messages: list, where: str) -> tuple[dict, dict, list[str]]:
    """(last user turn, the assistant turn after it, the answers of the earlier turns) of an example."""
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    users = [i for i, m in enumerate(turns) if m["role"] == "user"]
    if not users:
        raise DataError(f"{where}: no user turn in 'messages'.")
    last = users[-1]
    assistant = turns[last + 1] if last + 1 < len(turns) else None
    if assistant is None or not _text_of(assistant):
        raise DataError(
            f"{where}: no assistant turn (with text) after the last user turn in 'messages'; SFT needs the "
            "answer to learn.",
            hint="Preprocess the labels again, or delete that line.",
        )
    earlier = [_text_of(m) for m in turns[:last] if m["role"] == "assistant"]
    if len(earlier) != len(users) - 1:
        raise DataError(f"{where}: earlier turns must alternate user (a frame) and assistant (its answer).")
    return turns[last], assistant, earlier


def _checked_image(image: Path, where: str) -> Path:
    """The absolute path of an image that exists and decodes (DataError otherwise)."""
    from PIL import Image

    image = image.resolve()
    if not image.is_file():
        raise DataError(
            f"{where}: image {image} does not exist.",
            hint="Image paths are relative to the dataset file's folder.",
        )
    try:
        with Image.open(image) as im:
            im.verify()
    except Exception as exc:
        raise DataError(f"{where}: image {image} does not decode ({type(exc).__name__}: {exc}).") from None
    return image


def _open_rgb(example: SftExample, image: Path | None = None):
    from PIL import Image

    image = image or example.image
    try:
        with Image.open(image) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise DataError(f"{example.source}: image {image} does not decode ({exc}).") from None


class SftCollator:
    """Examples -> a left-padded ``BatchFeature`` with ``labels`` (for the model's forward).

    Samples longer than `max_length` tokens (image tokens included):

    * ``"skip"``: dropped from the batch, counted in ``skipped``.
    * ``"truncate"``: answer tokens are cut from the end (the end-of-turn token goes too) until the sample
      fits; counted in ``truncated``. The prompt and image span are never cut: a sample whose prompt
      alone is longer than `max_length` (or leaves no answer token) is skipped and counted in ``skipped``.

    If every sample of a batch is dropped, a DataError says so (raise max_length).

    Each distinct sample is collated once per process and kept (`cache`, see sft/collate_cache.py: the batches
    are bit-identical). With `positions`, a Qwen batch also carries the M-RoPE ``position_ids``, computed here
    (in a loader worker) rather than row by row in the model's forward.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        max_length: int,
        on_too_long: str = "truncate",
        *,
        cache: bool = True,
        positions: bool = True,
    ):
        if on_too_long not in ("truncate", "skip"):
            raise ValueError(f"on_too_long must be 'truncate' or 'skip', got {on_too_long!r}")
        self.loaded = loaded
        self.max_length = max_length
        self.on_too_long = on_too_long
        self.skipped = 0
        self.truncated = 0
        # Each distinct sample collated once per process (sft/collate_cache.py); None: every time from scratch.
        self.cache = CollateCache() if cache else None
        self.positions = (
            positions  # the family's position ids, computed here rather than in the model's forward
        )

    def _build(self, examples: list[SftExample]) -> BatchFeature:
        if self.cache is None:
            return self._build_uncached(examples)
        parts = []
        for example in examples:
            key, frames, rows, pixels = self.cache.lookup(example)
            if rows is None or pixels is None:
                self.cache.misses += 1
                rows, pixels = self.cache.store(key, frames, self._build_uncached([example]))
            else:
                self.cache.hits += 1
            parts.append((rows, pixels))
        tokenizer = self.loaded.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = merge(self.cache, parts, pad_id, IGNORE_INDEX)
        return batch if batch is not None else self._build_uncached(examples)

    def _build_uncached(self, examples: list[SftExample]) -> BatchFeature:
        histories = None
        if any(e.history for e in examples):
            histories = [[Turn(_open_rgb(e, frame), answer) for frame, answer in e.history] for e in examples]
        return build_inputs(
            self.loaded,
            [_open_rgb(e) for e in examples],
            [e.prompt for e in examples],
            answers=[e.answer for e in examples],
            histories=histories,
        )

    def __call__(self, examples: list[SftExample]) -> BatchFeature:
        batch = self._build(examples)
        lengths = batch["attention_mask"].sum(1).tolist()
        prompt_lengths = (batch["attention_mask"].bool() & (batch["labels"] == IGNORE_INDEX)).sum(1).tolist()
        keep, cut = [], {}
        for i, (n, p) in enumerate(zip(lengths, prompt_lengths, strict=True)):
            if n <= self.max_length:
                keep.append(i)
            elif self.on_too_long == "truncate" and p < self.max_length:
                keep.append(i)
                cut[i] = n - self.max_length
            else:
                self.skipped += 1
        if not keep:
            raise DataError(
                f"Every sample of a batch of {len(examples)} is longer than sft.max_length={self.max_length} "
                f"(lengths {lengths}).",
                hint="Raise sft.max_length.",
            )
        if len(keep) < len(examples):
            batch = self._build([examples[i] for i in keep])
            cut = {keep.index(i): c for i, c in cut.items()}
        if cut:
            self.truncated += len(cut)
            batch = self._truncate(batch, cut)
        if self.positions:
            positions = self.loaded.family.position_ids(batch, self.loaded.processor.image_processor)
            if positions is not None:
                batch["position_ids"] = positions
        return batch

    @staticmethod
    def _truncate(batch: BatchFeature, cut: dict[int, int]) -> BatchFeature:
        """Drop `cut[i]` tokens from the end of row i (answer tokens only), re-pad left to the new max."""
        import torch

        mask = batch["attention_mask"]
        shape = mask.shape
        keys = [k for k, v in batch.items() if torch.is_tensor(v) and v.shape == shape]
        new_len = [int(mask[i].sum()) - cut.get(i, 0) for i in range(shape[0])]
        width = max(new_len)
        for key in keys:
            rows = []
            for i in range(shape[0]):
                row = batch[key][i]
                end = shape[1] - cut.get(i, 0)
                rows.append(row[end - width : end])  # left padding: valid tokens sit at the right
            batch[key] = torch.stack(rows)
        return batch


def length_grouped_indices(lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50) -> list[int]:
    """A sampler order where each batch holds samples of similar length.

    Shuffle, split into mega-batches of ``batch_size * mega``, sort each by length (longest first),
    then shuffle the order of the batches (so the longest one is not always first). Every index once.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    size = batch_size * mega
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start : start + size], key=lambda i: -lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for b in batches for i in b]
