"""SFT examples with ``env.history``: preprocess puts each step's earlier turns (frames and labelled answers)
before it, the dataset reads them back, and the collator's labels cover the last answer only."""

from __future__ import annotations

import json

import pytest
import torch

from vlmppo.config import load_config
from vlmppo.data.collect import collect
from vlmppo.data.label import label
from vlmppo.data.preprocess import preprocess
from vlmppo.models.inputs import IGNORE_INDEX
from vlmppo.sft.dataset import SftCollator, load_sft_examples


@pytest.fixture(scope="module")
def history_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("history-data")
    cfg = load_config(
        "numberline-tiny",
        overrides=[f"run.output_dir={out}", "run.name=run", "env.history=2", "collect.episodes=6",
                   "preprocess.val_fraction=0", "preprocess.dedupe=false"],
    )  # fmt: skip
    collect(cfg)
    label(cfg)
    preprocess(cfg)
    return cfg, out / "run"


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_example_starts_with_its_episodes_last_two_labelled_turns(history_data):
    _, run = history_data
    rows = rows_of(run / "data/train.jsonl")
    by_step = {(r["episode"], r["step"]): r for r in rows}
    assert any(r["step"] >= 2 for r in rows)
    for row in rows:
        earlier = min(row["step"], 2)
        messages = row["messages"]
        assert len(messages) == 2 * earlier + 2 and len(row["images"]) == earlier + 1
        assert [m["role"] for m in messages] == ["user", "assistant"] * (earlier + 1)
        for i in range(earlier):  # the earlier turn's frame and its own example's answer
            step = row["step"] - earlier + i
            assert row["images"][i] == f"images/{row['episode']:06d}/{step:03d}.png"
            assert messages[2 * i]["content"] == [{"type": "image"}]
            own = by_step[(row["episode"], step)]["messages"][-1]
            assert messages[2 * i + 1] == own
        assert (
            messages[-2]["content"][0] == {"type": "image"} and messages[-2]["content"][1]["type"] == "text"
        )
    assert all((run / "data" / image).is_file() for row in rows for image in row["images"])


def test_the_collator_labels_only_the_last_answer_of_a_history_example(history_data):
    from vlmppo.models import load_model

    cfg, run = history_data
    examples = load_sft_examples(run / "data/train.jsonl")
    with_history = [e for e in examples if len(e.history) == 2][:2]
    assert len(with_history) == 2
    assert all(frame.is_file() and answer for e in with_history for frame, answer in e.history)
    loaded = load_model(cfg.model.model_copy(update={"lora": None}), for_training=False)
    batch = SftCollator(loaded, max_length=4096)(with_history)
    tokenizer = loaded.tokenizer
    image_id = loaded.model.config.image_token_id
    for row, example in enumerate(with_history):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        assert tokenizer.decode(labelled, skip_special_tokens=True) == example.answer
        # Three frames in the input: two earlier turns and the example's own.
        assert int((batch["input_ids"][row] == image_id).sum()) == 3 * int(
            (SftCollator(loaded, 4096)([example.__class__(example.prompt, example.answer, example.image)])[
                "input_ids"
            ] == image_id).sum()
        )  # fmt: skip
    with torch.no_grad():
        loss = loaded.model(**batch).loss
    assert torch.isfinite(loss)
