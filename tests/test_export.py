"""`vlmppo export`: the exported folder loads with plain peft (and, merged, plain transformers) and gives the
checkpoint's logits; its card names the eval result; the push goes to a local stand-in of the Hub."""

from __future__ import annotations

import json

import pytest
import torch
from tests.helpers import run_cli
from tests.hub_standin import HubStandin

from vlmppo.checkpoints import load_for_inference, save_checkpoint
from vlmppo.config import config_to_yaml, load_config, run_dir
from vlmppo.errors import CheckpointError, ResultExistsError
from vlmppo.eval.runner import evaluate
from vlmppo.export import export_checkpoint
from vlmppo.models import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A probe-constant-tiny run with one SFT checkpoint (a real LoRA adapter whose B matrices are non-zero, so
    merging changes the weights) and a real evaluation of it and of the expert baseline."""
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("probe-constant-tiny", overrides=[f"run.output_dir={out}", "run.name=probe", "eval.episodes=2",
                                                        "eval.max_new_tokens=4", "eval.trajectories=1"])  # fmt: skip
    loaded = load_model(cfg.model, device="cpu", for_training=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, weight in loaded.model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05)

    def write(folder):
        loaded.model.save_pretrained(folder)
        loaded.processor.save_pretrained(folder)
        (folder / "config.yaml").write_text(config_to_yaml(cfg))

    meta = {"stage": "sft", "family": cfg.model.family, "base_model": str(loaded.path), "epoch": 1.0}
    ckpt = save_checkpoint(run_dir(cfg) / "sft" / "checkpoints", 1, meta, write)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"ckpt": str(ckpt)})})
    agent = evaluate(cfg)
    evaluate(cfg, policy="expert")
    return cfg, ckpt, agent.metrics


def logits(model, cfg):
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_an_exported_adapter_loads_with_plain_peft_and_gives_the_checkpoints_logits(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    cfg, ckpt, metrics = run
    result = export_checkpoint(ckpt, tmp_path / "agent")
    folder = tmp_path / "agent"
    assert not result.merged and {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(
        result.files
    )
    assert not {"trainer_state.pt", "value_head.safetensors", "vlmppo.json"} & set(result.files)
    base = AutoModelForImageTextToText.from_pretrained(result.record["base_model"])
    plain = PeftModel.from_pretrained(base, str(folder)).eval()
    ours = load_for_inference(cfg, str(ckpt)).model
    assert torch.allclose(logits(plain, cfg), logits(ours, cfg), atol=1e-5)
    card = (folder / "README.md").read_text()
    # The card names the eval of this checkpoint and the expert baseline, with their intervals.
    low, high = (100 * x for x in metrics["success_ci95"])
    assert (
        f"| **this model** (sft-000001) | 2 | {100 * metrics['success_rate']:.1f}% | {low:.1f}% - {high:.1f}% |"
        in card
    )
    assert "| expert (baseline) | 2 | 100.0% |" in card
    assert "PeftModel.from_pretrained(base" in card and "library_name: peft" in card
    assert "![episode](assets/episode.png)" in card and (folder / "assets/episode.png").is_file()
    record = json.loads((folder / "vlmppo/record.json").read_text())
    assert record["manifests"]["sft"]["stage"] == "sft" and "eval/expert" in record["manifests"]
    assert (folder / "vlmppo/config.yaml").read_text() == (ckpt / "config.yaml").read_text()


def test_a_merged_export_loads_with_plain_from_pretrained_and_matches_the_adapter(run, tmp_path):
    from transformers import AutoModelForImageTextToText

    cfg, ckpt, _ = run
    result = export_checkpoint(ckpt, tmp_path / "merged", merge=True)
    assert result.merged and "adapter_config.json" not in result.files and "config.json" in result.files
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    base = AutoModelForImageTextToText.from_pretrained(result.record["base_model"]).eval()
    ours = load_for_inference(cfg, str(ckpt)).model
    assert torch.allclose(logits(merged, cfg), logits(ours, cfg), atol=1e-4)
    assert not torch.allclose(
        logits(base, cfg), logits(ours, cfg), atol=1e-3
    )  # the adapter changed the model
    assert "library_name: transformers" in (tmp_path / "merged/README.md").read_text()


def test_an_export_over_a_folder_with_files_needs_overwrite_and_then_replaces_it(run, tmp_path):
    _, ckpt, _ = run
    out = tmp_path / "agent"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ResultExistsError, match="already holds files"):
        export_checkpoint(ckpt, out)
    assert (out / "old.txt").is_file()
    export_checkpoint(ckpt, out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".agent.tmp-*"))
    with pytest.raises(ResultExistsError, match="inside the checkpoint"):
        export_checkpoint(ckpt, ckpt / "export")


def test_a_damaged_checkpoint_is_not_exported(run, tmp_path):
    _, ckpt, _ = run
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for path in ckpt.iterdir():
        copy.joinpath(path.name).write_bytes(path.read_bytes())
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        export_checkpoint(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_export_push_to_hub_uploads_the_folder_to_the_hub_it_is_pointed_at(run, tmp_path):
    _, ckpt, _ = run
    with HubStandin() as hub:
        hub_env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_standin", "HF_HUB_OFFLINE": "0"}
        out = run_cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "agent"), "--push-to-hub", "me/probe",
                      env=hub_env)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"pushed to {hub.url}/me/probe" in out.stdout
        assert "card: success" in out.stdout
        pushed = hub.repos["me/probe"]
        local = {str(p.relative_to(tmp_path / "agent")): p.read_bytes() for p in (tmp_path / "agent").rglob("*")
                 if p.is_file()}  # fmt: skip
        assert pushed == local  # every file, byte for byte
        assert hub.metadata[-1]["library_name"] == "peft" and "probe/Constant-v0" in hub.metadata[-1]["tags"]
        denied = run_cli("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "again"), "--push-to-hub",
                         "someone-else/probe", env=hub_env)  # fmt: skip
    assert denied.returncode == 1 and "Traceback" not in denied.stderr
    assert "Could not push" in denied.stderr and "'someone-else/probe'" in denied.stderr
    assert (tmp_path / "again/README.md").is_file()  # the folder was written before the push failed


def test_a_full_fine_tune_exports_as_a_plain_model_and_merge_has_nothing_to_do(tmp_path):
    from transformers import AutoModelForImageTextToText

    cfg = load_config(
        "probe-constant-tiny", overrides=[f"run.output_dir={tmp_path}", "run.name=full", "model.lora=null"]
    )
    loaded = load_model(cfg.model, device="cpu", for_training=True)

    def write(folder):
        loaded.model.save_pretrained(folder)
        loaded.processor.save_pretrained(folder)
        (folder / "config.yaml").write_text(config_to_yaml(cfg))

    meta = {"stage": "sft", "family": cfg.model.family, "base_model": str(loaded.path)}
    ckpt = save_checkpoint(run_dir(cfg) / "sft" / "checkpoints", 3, meta, write)
    result = export_checkpoint(ckpt, tmp_path / "exported", merge=True)
    assert not result.merged and not result.record["lora"] and "adapter_config.json" not in result.files
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path / "exported").eval()
    assert torch.allclose(logits(plain, cfg), logits(loaded.model.eval(), cfg), atol=1e-5)
    card = (tmp_path / "exported/README.md").read_text()
    assert "This folder holds the full model" in card and "library_name: transformers" in card
    assert "This checkpoint was not evaluated in its run" in card
