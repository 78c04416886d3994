"""SFT dataset + collator: which tokens carry loss, per family; truncate/skip; bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmppo.config.schema import ModelConfig
from vlmppo.errors import DataError
from vlmppo.models.inputs import IGNORE_INDEX
from vlmppo.models.loading import load_model
from vlmppo.registry import FAMILIES
from vlmppo.sft.dataset import SftCollator, SftExample, length_grouped_indices, load_sft_examples


@pytest.fixture(scope="session", params=FAMILIES)
def loaded(request):
    torch.set_num_threads(1)
    return load_model(ModelConfig(family=request.param, path=f"tiny:{request.param}"), for_training=False)


def end_of_turn(loaded) -> str:
    """The end-of-turn text, found from the family's chat template (what follows the answer)."""
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ANSWERX"}]},
    ]
    text = loaded.processor.apply_chat_template(conv, tokenize=False)
    return text[text.index("ANSWERX") + len("ANSWERX") :].strip()


def write_dataset(tmp_path, rows, image_ok=True):
    (tmp_path / "frames").mkdir(exist_ok=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "frames" / "a.png")
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "data" / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(prompt="Where?", answer='{"action": "+"}', image="../frames/a.png"):
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [image],
        "episode": 0,
    }


@pytest.fixture
def examples(tmp_path):
    path = write_dataset(
        tmp_path,
        [
            row("Short?", '{"a": 1}'),
            row("A much longer prompt here, please?", '{"action": "-", "why": "left"}'),
        ],
    )
    return load_sft_examples(path)


def test_load_resolves_images(examples, tmp_path):
    assert len(examples) == 2
    assert examples[0].image == (tmp_path / "frames" / "a.png").resolve()
    assert examples[0].prompt == "Short?" and examples[0].answer == '{"a": 1}'


def test_labels_mask_exact(loaded, examples):
    collator = SftCollator(loaded, max_length=4096)
    batch = collator(examples)
    tok = loaded.tokenizer
    eot = end_of_turn(loaded)
    assert eot and eot == tok.eos_token
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape
    lengths = mask.sum(1).tolist()
    assert lengths[0] != lengths[1]  # different lengths -> one row left-padded
    for i, ex in enumerate(examples):
        carry = labels[i] != IGNORE_INDEX
        # the loss tokens are exactly the answer + end-of-turn, and they are the last tokens of the row
        assert tok.decode(labels[i][carry]) == ex.answer + eot
        assert torch.equal(labels[i][carry], ids[i][carry])
        n = int(carry.sum())
        assert carry[-n:].all() and not carry[:-n].any()
        # no padding, prompt or image token carries loss
        assert not carry[mask[i] == 0].any()
        pad = ids.shape[1] - lengths[i]
        assert (mask[i][:pad] == 0).all() and (mask[i][pad:] == 1).all()
        image_ids = (
            {loaded.model.config.image_token_id} if hasattr(loaded.model.config, "image_token_id") else set()
        )
        image_ids.add(getattr(loaded.model.config, "image_token_index", -1))
        assert not any(t in image_ids for t in labels[i][carry].tolist())
        assert any(t in image_ids for t in ids[i].tolist())
    assert collator.skipped == collator.truncated == 0


def _image_count(loaded, ids):
    cfg = loaded.model.config
    image_id = getattr(cfg, "image_token_id", None) or cfg.image_token_index
    return int((ids == image_id).sum())


def test_truncate_cuts_answer_only(loaded, examples):
    full = SftCollator(loaded, max_length=4096)(examples)
    lengths = full["attention_mask"].sum(1).tolist()
    answer_len = (full["labels"] != IGNORE_INDEX).sum(1).tolist()
    limit = lengths[1] - 3  # row 1 (longer) loses 3 answer tokens; row 0 fits
    assert lengths[0] <= limit and answer_len[1] > 3
    collator = SftCollator(loaded, max_length=limit, on_too_long="truncate")
    batch = collator(examples)
    assert collator.truncated == 1 and collator.skipped == 0
    assert batch["input_ids"].shape[1] == limit
    assert batch["attention_mask"].sum(1).tolist() == [lengths[0], limit]
    # row 1 is its full row minus the last 3 tokens; the image span is intact
    full_row = full["input_ids"][1][full["attention_mask"][1].bool()]
    assert torch.equal(batch["input_ids"][1], full_row[:-3])
    assert _image_count(loaded, batch["input_ids"][1]) == _image_count(loaded, full["input_ids"][1])
    labels = batch["labels"][1]
    assert loaded.tokenizer.decode(labels[labels != IGNORE_INDEX]) == loaded.tokenizer.decode(
        full["labels"][1][full["labels"][1] != IGNORE_INDEX][:-3]
    )
    assert torch.equal(batch["labels"][0], full["labels"][0][-limit:])
    for key, value in full.items():  # per-token keys (e.g. mm_token_type_ids) are cut the same way
        if torch.is_tensor(value) and value.shape == full["input_ids"].shape:
            assert batch[key].shape == batch["input_ids"].shape, key


def test_truncate_never_cuts_prompt(loaded, examples):
    full = SftCollator(loaded, max_length=4096)(examples)
    prompt_len = int(((full["labels"][1] == IGNORE_INDEX) & full["attention_mask"][1].bool()).sum())
    lengths = full["attention_mask"].sum(1).tolist()
    if lengths[0] > prompt_len:
        pytest.skip("short row longer than long prompt")
    collator = SftCollator(loaded, max_length=prompt_len, on_too_long="truncate")
    batch = collator(examples)
    assert collator.skipped == 1 and batch["input_ids"].shape[0] == 1


def test_skip_drops_and_counts(loaded, examples):
    full = SftCollator(loaded, max_length=4096)(examples)
    lengths = full["attention_mask"].sum(1).tolist()
    collator = SftCollator(loaded, max_length=lengths[1] - 1, on_too_long="skip")
    batch = collator(examples)
    assert collator.skipped == 1 and collator.truncated == 0
    assert batch["input_ids"].shape[0] == 1
    assert (
        loaded.tokenizer.decode(batch["labels"][0][batch["labels"][0] != IGNORE_INDEX])
        == examples[0].answer + loaded.tokenizer.eos_token
    )
    for key in loaded.family.forward_keys:
        assert key in batch
    with pytest.raises(DataError, match="max_length"):
        SftCollator(loaded, max_length=16, on_too_long="skip")(examples)


def test_missing_assistant_turn(tmp_path):
    bad = row()
    bad["messages"] = bad["messages"][:1]
    path = write_dataset(tmp_path, [row(), bad])
    with pytest.raises(DataError, match=r"train.jsonl, line 2: no assistant turn"):
        load_sft_examples(path)


def test_missing_image(tmp_path):
    path = write_dataset(tmp_path, [row(image="../frames/nope.png")])
    with pytest.raises(DataError, match=r"line 1: image .*nope.png does not exist"):
        load_sft_examples(path)


def test_image_does_not_decode(tmp_path):
    path = write_dataset(tmp_path, [row(), row(image="../frames/bad.png")])
    (tmp_path / "frames" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"line 2: image .*bad.png does not decode"):
        load_sft_examples(path)


def test_empty_dataset(tmp_path):
    path = write_dataset(tmp_path, [])
    with pytest.raises(DataError, match="is empty"):
        load_sft_examples(path)


def test_invalid_json_line(tmp_path):
    path = write_dataset(tmp_path, [row()])
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(DataError, match="line 2: not a valid JSON"):
        load_sft_examples(path)


def test_length_grouped_indices():
    lengths = [5, 100, 7, 98, 6, 99, 8, 97]
    order = length_grouped_indices(lengths, batch_size=2, seed=1)
    assert sorted(order) == list(range(8))
    batches = [order[i : i + 2] for i in range(0, 8, 2)]
    for b in batches:
        assert abs(lengths[b[0]] - lengths[b[1]]) <= 3
    assert SftExample("ab", "cde", None).approx_length == 5
