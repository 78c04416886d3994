"""Tiny models: the cache, path resolution and its errors, and the locally trained tokenizers."""

from __future__ import annotations

import json
import os

import pytest

from vlmppo.errors import ModelError
from vlmppo.models import FAMILIES, build_tiny_model, resolve_model_path
from vlmppo.models.tiny import MARKER, TINY_VERSION

SAMPLE = '{"thoughts": "The target is 7, so I move right: (3 + 4) * 2 = 14.", "action": "turn left"} é ✓'


def test_tiny_model_is_cached_with_completion_marker(tiny_dirs, tiny_cache, family):
    folder = tiny_dirs[family]
    assert folder.parent == tiny_cache / "tiny"
    assert json.loads((folder / MARKER).read_text())["family"] == family
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in folder.iterdir()
    }
    assert resolve_model_path(f"tiny:{family}") == folder  # second call: no rebuild
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]  # no temp folder left behind


def test_half_written_cache_folder_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMPPO_CACHE", str(tmp_path))
    broken = tmp_path / "tiny" / f"llava-{TINY_VERSION}"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text('{"model_type": "interrupted"}')  # no completion marker
    stale = tmp_path / "tiny" / f".llava-{TINY_VERSION}.tmp-999999-deadbeef"  # a killed build's temp folder
    stale.mkdir()
    os.utime(stale, (0, 0))
    folder = resolve_model_path("tiny:llava")
    assert folder == broken
    assert (folder / MARKER).is_file()
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llava"
    assert not stale.exists()


def test_nonexistent_local_path_raises_model_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="no-such-model.*does not exist"):
        resolve_model_path(str(missing))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_path("./checkpoints/missing")


def test_hub_id_is_passed_through_unresolved():
    assert resolve_model_path("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"


def test_unsupported_family_raises_model_error_listing_supported(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelError) as err:
        resolve_model_path(str(tmp_path))
    assert "'bert'" in str(err.value)
    assert all(name in str(err.value) for name in FAMILIES)


def test_unknown_tiny_family_raises_model_error():
    with pytest.raises(ModelError, match="Unknown model family 'gpt2'.*qwen2-vl"):
        resolve_model_path("tiny:gpt2")


def test_folder_without_config_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(ModelError, match="not empty"):
        build_tiny_model("llava", tmp_path)


def test_tiny_tokenizer_ids_identical_after_save_and_load(tiny_dirs, family):
    from transformers import AutoTokenizer

    trained = FAMILIES[family].tiny_tokenizer()
    reloaded = AutoTokenizer.from_pretrained(tiny_dirs[family])
    specials = " ".join(trained.all_special_tokens)
    for text in (SAMPLE, specials, "USER: <image>\n12 - 3 = 9 ASSISTANT:"):
        assert reloaded(text)["input_ids"] == trained(text)["input_ids"]
    assert reloaded.get_vocab() == trained.get_vocab()
    assert reloaded.padding_side == "left"


def test_tiny_tokenizer_knows_the_answer_vocabulary_and_gives_offsets(tiny_dirs, family):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[family])
    for word in ('"thoughts"', '"action"', " forward", " stand", " toggle"):
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) <= 3, word  # not byte by byte
    enc = tokenizer(SAMPLE, add_special_tokens=False, return_offsets_mapping=True)
    start, end = enc["offset_mapping"][0][0], enc["offset_mapping"][-1][1]
    assert (start, end) == (0, len(SAMPLE))
    assert tokenizer.decode(enc["input_ids"]) == SAMPLE


def test_tiny_models_ship_a_hostile_generation_config_that_loading_keeps(frozen_models, tiny_dirs, family):
    """Like a released checkpoint's defaults, on purpose: tests that generate prove vlmppo's settings win."""
    from vlmppo.models.adapter import HOSTILE_GENERATION

    saved = json.loads((tiny_dirs[family] / "generation_config.json").read_text())
    assert {k: saved[k] for k in HOSTILE_GENERATION} == HOSTILE_GENERATION
    assert {"repetition_penalty", "top_k", "no_repeat_ngram_size", "min_p"} <= saved.keys()
    loaded = frozen_models[family].model.generation_config  # through load_model, as a real checkpoint
    assert {k: getattr(loaded, k) for k in HOSTILE_GENERATION} == HOSTILE_GENERATION


BUILD_AT_ONCE = """
import sys, time
from pathlib import Path
from vlmppo.models.tiny import MARKER, cached_build

final, log = Path(sys.argv[1]), Path(sys.argv[2])

def build(out):
    with log.open("a") as f:
        f.write("build\\n")
    out.mkdir()
    time.sleep(1.0)  # long enough for the other process to arrive while this one builds
    (out / "weights").write_text("w")
    (out / MARKER).write_text("{}")

path = cached_build(final, build)
print((path / "weights").read_text())
"""


def test_two_processes_building_the_same_tiny_model_at_once_build_it_once(tmp_path):
    # The ranks of a launched run start together on an empty cache; one must not remove, as an interrupted
    # build, the folder the other has just renamed into place.
    import subprocess
    import sys

    final, log = tmp_path / "cache" / "tiny" / "model", tmp_path / "builds.log"
    command = [sys.executable, "-c", BUILD_AT_ONCE, str(final), str(log)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == ["w\n", "w\n"]
    assert log.read_text() == "build\n"  # the second waited for the first and took its copy


BUILD_ON_EACH_RANK = """
import os, sys
from pathlib import Path
import torch.distributed as dist

dist.init_process_group("gloo")
os.environ["VLMPPO_CACHE"] = str(Path(sys.argv[1]) / f"rank{dist.get_rank()}")
from vlmppo.models.tiny import tiny_model_path

print(dist.get_rank(), sorted(p.name for p in tiny_model_path("qwen2-vl").iterdir()))
dist.destroy_process_group()
"""


def test_a_rank_other_than_0_builds_a_whole_tiny_model(tmp_path):
    # transformers 5.x silently writes no model files on rank > 0 of an initialised process group; a rank that
    # builds the cache (the first to take the lock) must still write config.json and the weights.
    import os
    import subprocess
    import sys

    script = tmp_path / "build_on_each_rank.py"
    script.write_text(BUILD_ON_EACH_RANK)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    out = subprocess.run(
        [*torchrun, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        files = {p.name for p in (tmp_path / f"rank{rank}" / "tiny" / "qwen2-vl-v2").iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files, (rank, files)
