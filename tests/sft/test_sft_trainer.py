"""The SFT loop on tiny models: which parameters move, reload with plain peft, exact resume, accumulation."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from tests.sft.helpers import sft_config, write_color_dataset

from vlmppo.sft import train_sft


def initial_parameters(cfg) -> dict[str, torch.Tensor]:
    """The parameters a run starts from: train_sft seeds torch with run.seed right before loading."""
    from vlmppo.models import load_model

    torch.manual_seed(cfg.run.seed)
    model = load_model(cfg.model, for_training=True).model
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def metrics(cfg) -> list[dict]:
    path = cfg.run.output_dir + f"/{cfg.run.name}/sft/metrics.jsonl"
    return [json.loads(line) for line in open(path)]


@pytest.mark.parametrize(
    "extra, trained",
    [
        ([], ("lora_",)),
        (["model.lora.train_projector=true"], ("lora_", "merger.modules_to_save")),
    ],
    ids=["lora", "lora+projector"],
)
def test_two_steps_change_every_trainable_parameter_and_no_frozen_one(tmp_path, extra, trained):
    # LoRA B starts at zero, so A gets no gradient on the first step: two steps move every LoRA weight.
    train, val = write_color_dataset(tmp_path)
    cfg = sft_config(tmp_path, train, val, "sft.max_steps=2", *extra)
    before = initial_parameters(cfg)
    result = train_sft(cfg)
    after = dict(result.loaded.model.named_parameters())
    assert after.keys() == before.keys()
    for name, param in after.items():
        moved = not torch.equal(param.detach(), before[name])
        assert moved == any(t in name for t in trained), name
        assert param.requires_grad == moved, name
    assert result.steps == 2 and result.final is not None


def test_full_fine_tuning_moves_the_weights_and_saves_a_plain_transformers_model(tmp_path):
    from transformers import AutoModelForImageTextToText

    train, val = write_color_dataset(tmp_path)
    cfg = sft_config(tmp_path, train, val, "sft.max_steps=2", "model.lora=null", "sft.lr=1e-3")
    before = initial_parameters(cfg)
    result = train_sft(cfg)
    after = dict(result.loaded.model.named_parameters())
    moved = [n for n, p in after.items() if not torch.equal(p.detach(), before[n])]
    language = [n for n in after if ".language_model." in n]
    assert set(language) <= set(moved)
    assert not (result.final / "adapter_config.json").exists()
    reloaded = AutoModelForImageTextToText.from_pretrained(str(result.final))
    for name, param in reloaded.named_parameters():
        assert torch.equal(param, after[name].detach()), name


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "llava", "llava-next"])
def test_final_adapter_reloads_with_plain_peft_and_gives_identical_logits(tmp_path, family):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmppo.sft.dataset import SftCollator, load_sft_examples

    train, val = write_color_dataset(tmp_path)
    cfg = sft_config(
        tmp_path, train, val, "sft.max_steps=2", f"model.family={family}", f"model.path=tiny:{family}"
    )
    result = train_sft(cfg)
    meta = json.loads((result.final / "vlmppo.json").read_text())
    assert meta["stage"] == "sft" and meta["family"] == family and meta["final"] is True
    assert not (result.final / "trainer_state.pt").exists()
    base = AutoModelForImageTextToText.from_pretrained(meta["base_model"])
    plain = PeftModel.from_pretrained(base, str(result.final)).eval()
    ours = result.loaded.model.eval()
    batch = SftCollator(result.loaded, 4096)(load_sft_examples(val))
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(plain(**batch).logits, ours(**batch).logits)


@pytest.mark.parametrize("stop_by", ["SIGUSR1", "sft.stop_at_step=2"])
def test_two_steps_then_resume_two_gives_the_same_losses_and_weights_as_four_straight(tmp_path, stop_by):
    # Dropout on, 6 samples in micro-batches of 2 with 2-step accumulation: a step crosses an epoch
    # boundary, so the RNG streams, the data position and the optimizer state must all come back. Stopped by
    # the signal SLURM sends before its time limit, or by sft.stop_at_step (the 4-step schedule all along).
    train, val = write_color_dataset(tmp_path, n_train=6, n_val=3)
    common = ["sft.max_steps=4", "sft.batch_size=2", "sft.grad_accum=2", "sft.eval_every=1",
              "model.lora.dropout=0.1", "sft.lr=5e-3", "sft.warmup_ratio=0.3"]  # fmt: skip
    straight = sft_config(tmp_path, train, val, *common, "run.name=straight")
    a = train_sft(straight)

    by_signal = stop_by == "SIGUSR1"
    stopped = sft_config(tmp_path, train, val, *common, "run.name=resumed", *([] if by_signal else [stop_by]))

    def interrupt(step, total, row):
        if by_signal and step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    b1 = train_sft(stopped, on_step=interrupt)
    assert b1.stopped_by == stop_by and b1.steps == 2 and b1.final is None
    assert b1.checkpoint.name == "000002"
    resumed = stopped if by_signal else sft_config(tmp_path, train, val, *common, "run.name=resumed")
    b2 = train_sft(resumed, resume="auto")
    assert b2.resumed_from == b1.checkpoint and b2.stopped_by is None and b2.steps == 4
    assert b2.resume_changes == []  # where a run stops is not a change of the run (config.WHERE_IT_STOPS)
    keys = ["step", "sft/loss", "sft/grad_norm", "sft/lr", "sft/tokens", "eval/loss", "eval/token_acc"]
    rows_a = [{k: r.get(k) for k in keys} for r in metrics(straight)]
    rows_b = [{k: r.get(k) for k in keys} for r in metrics(stopped)]
    assert [r["step"] for r in rows_a] == [1, 2, 3, 4, 4]  # + the final row
    assert rows_a == rows_b  # sft/lr included: the stopped run kept the 4-step schedule
    wa = load_file(str(a.final / "adapter_model.safetensors"))
    wb = load_file(str(b2.final / "adapter_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_micro_batches_of_two_make_the_same_step_as_one_batch_of_four(tmp_path):
    # The loss is normalised by the answer tokens of the whole step, so accumulation changes nothing but memory.
    train, val = write_color_dataset(tmp_path, n_train=8)
    one = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=2", "run.name=b4"))
    two = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=2", "sft.batch_size=2", "sft.grad_accum=2",
                               "run.name=b2x2"))  # fmt: skip
    assert one.last_metrics["sft/tokens"] == two.last_metrics["sft/tokens"]
    assert one.last_metrics["sft/loss"] == pytest.approx(two.last_metrics["sft/loss"], rel=1e-5)
    wa = load_file(str(one.final / "adapter_model.safetensors"))
    wb = load_file(str(two.final / "adapter_model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_early_stopping_ends_the_run_and_still_writes_final(tmp_path):
    train, val = write_color_dataset(tmp_path)
    # An LR this high makes the eval loss rise at once; patience 1 stops at the second eval.
    cfg = sft_config(tmp_path, train, val, "sft.max_steps=50", "sft.eval_every=1", "sft.lr=3.0",
                     "sft.early_stopping_patience=1", "sft.lr_schedule=constant")  # fmt: skip
    result = train_sft(cfg)
    rows = [r for r in metrics(cfg) if not r.get("final")]
    losses = [r["eval/loss"] for r in rows]
    assert result.early_stopped and result.steps < 50
    assert losses[-1] >= min(losses[:-1])
    assert result.final is not None and result.checkpoint.name == f"{result.steps:06d}"
    # --resume auto (a requeued SLURM job) does not train a finished run further, and logs one final row
    again = train_sft(cfg, resume="auto")
    assert again.early_stopped and again.steps == result.steps
    assert [r["step"] for r in metrics(cfg) if r.get("final")] == [result.steps]


def test_gradient_checkpointing_trains_to_the_same_losses(tmp_path):
    train, val = write_color_dataset(tmp_path)
    plain = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=2", "run.name=plain"))
    ckpt = train_sft(
        sft_config(
            tmp_path, train, val, "sft.max_steps=2", "run.name=ckpt", "model.gradient_checkpointing=true"
        )
    )
    assert ckpt.loaded.model.base_model.model.is_gradient_checkpointing
    assert ckpt.last_metrics["sft/loss"] == pytest.approx(plain.last_metrics["sft/loss"], rel=1e-5)


def test_samples_over_max_length_are_truncated_and_counted(tmp_path):
    from vlmppo.models.inputs import IGNORE_INDEX
    from vlmppo.sft.dataset import SftCollator, load_sft_examples

    train, val = write_color_dataset(tmp_path, n_train=8)
    examples = load_sft_examples(train)
    probe = train_sft(sft_config(tmp_path, train, val, "sft.max_steps=1", "run.name=probe")).loaded
    batch = SftCollator(probe, 4096)(examples[:1])
    prompt = int(((batch["labels"] == IGNORE_INDEX) & batch["attention_mask"].bool()).sum())
    cfg = sft_config(tmp_path, train, val, "sft.max_steps=2", f"sft.max_length={prompt + 3}")
    result = train_sft(cfg)
    rows = metrics(cfg)
    assert result.truncated == 8 and result.skipped == 0  # two steps of 4 = every sample once, all cut
    assert rows[1]["data/truncated"] == 8 and rows[0]["data/truncated"] == 4
    assert rows[0]["sft/tokens"] == 4 * 3  # what is left of each answer: 3 tokens, all with loss


def test_resume_weights_load_for_a_cpu_rank_device_like_cpu_0(tmp_path):
    # accelerate hands CPU ranks a device such as "cpu:0", which safetensors' load_file rejects by name.
    from vlmppo.checkpoints import latest_checkpoint
    from vlmppo.config import run_dir
    from vlmppo.sft.checkpointing import load_weights

    train, val = write_color_dataset(tmp_path)
    cfg = sft_config(tmp_path, train, val, "sft.max_steps=2")
    train_sft(cfg)
    ckpt = latest_checkpoint(run_dir(cfg) / "sft" / "checkpoints")
    loaded, _ = load_weights(cfg, ckpt, torch.device("cpu", 0))
    saved = load_file(str(ckpt / "adapter_model.safetensors"))
    params = dict(loaded.model.named_parameters())
    for key, value in saved.items():
        name = next(n for n in params if n.replace(".default", "") == key)
        torch.testing.assert_close(params[name].detach(), value)
