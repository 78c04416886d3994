"""Does a setting fit a card? Peak memory and speed of an SFT step and of a PPO rollout + update, beside the
dry-run's estimate (``vlmppo.memory``), for ``bench/gpu_quant.py`` (4-bit bases against bf16 LoRA under a
24 GB cap, ``VLMPPO_GPU_MEM_CAP_GB`` / `vlmppo.sysinfo.apply_gpu_memory_cap`).

Each measurement loads its own model through ``load_model`` / ``build_policy`` (the run's code path,
quantisation included), frees it afterwards, and reports an out-of-memory error as a result (``status:
"oom"``), not a crash: under a cap that is the answer to "does it fit".
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vlmppo.benchmark.timing import now, peak_memory_gib, reset_peak_memory


@dataclass
class FitRow:
    """One stage of one setting: measured peak (``torch.cuda.max_memory_allocated``, GiB; None on CPU), the
    estimate, and the speed (SFT: samples/s; PPO: env-steps/s of the rollout and samples/s of the update)."""

    case: str
    stage: str
    status: str  # ok | oom | error
    cap_gib: float | None
    peak_gib: float | None
    estimate_gib: float | None
    samples_per_s: float | None = None
    env_steps_per_s: float | None = None
    tokens_per_sample: float | None = None
    decoder: str | None = None
    seconds: float = 0.0
    note: str = ""
    # GiB allocated when the stage began (after freeing what could be freed): 0 in a fresh process; more means
    # an earlier stage left tensors alive, which the peak includes
    start_gib: float | None = None

    @property
    def estimate_ratio(self) -> float | None:
        if self.peak_gib and self.estimate_gib:
            return self.estimate_gib / self.peak_gib
        return None

    def to_dict(self) -> dict:
        return {**asdict(self), "estimate_ratio": self.estimate_ratio}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def answer_text(tokenizer, tokens: int) -> str:
    """A JSON answer of about ``tokens`` tokens (thoughts of filler words, then an action)."""
    words = "the marker sits left of the target so the next move goes right " * (tokens // 4 + 8)
    ids = tokenizer(words, add_special_tokens=False)["input_ids"][: max(1, tokens - 24)]
    return '{"thoughts": "' + tokenizer.decode(ids).strip() + '", "action": "+"}'


def sft_examples(cfg, tokenizer, n: int, folder: Path, answer_tokens: int) -> list:
    """``n`` SFT examples of ``cfg``'s env: its frames (PNG files in ``folder``), its prompts, long answers."""
    from PIL import Image

    from vlmppo.envs import make_vec_env_from_config
    from vlmppo.rl.rollout import prompts_for
    from vlmppo.sft.dataset import SftExample

    folder.mkdir(parents=True, exist_ok=True)
    vec = make_vec_env_from_config(cfg.env, n, cfg.run.seed)
    frames, infos = vec.reset()
    prompts = prompts_for(vec.adapter, infos)
    vec.close()
    examples = []
    for i, (frame, prompt) in enumerate(zip(frames, prompts, strict=True)):
        path = folder / f"frame-{i}.png"
        Image.fromarray(frame).save(path)
        examples.append(SftExample(prompt=prompt, answer=answer_text(tokenizer, answer_tokens), image=path))
    return examples


def measure_sft(cfg, device: str, folder: Path, *, steps: int = 2) -> dict:
    """Peak memory and samples/s of ``steps`` SFT optimizer steps of ``sft.batch_size`` samples (after one
    warm-up step): ``load_model`` for training, the SFT collator, bf16 autocast on a GPU, AdamW."""
    from vlmppo.accel import make_accelerator, precision_for
    from vlmppo.memory import SFT_ANSWER_TOKENS
    from vlmppo.models import load_model
    from vlmppo.sft.dataset import SftCollator
    from vlmppo.sft.loss import token_loss

    torch.manual_seed(cfg.run.seed)
    reset_peak_memory(device)
    accelerator = make_accelerator(device, precision_for("auto", device))
    loaded = load_model(cfg.model, device=device, for_training=True)
    model = loaded.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.sft.lr)
    collator = SftCollator(loaded, cfg.sft.max_length, cfg.sft.on_too_long)
    batch_size = cfg.sft.batch_size
    examples = sft_examples(cfg, loaded.tokenizer, batch_size, folder, SFT_ANSWER_TOKENS)
    model.train()
    tokens = 0
    for step in range(steps + 1):
        if step == 1:
            start = now(device)
        batch = collator(examples).to(device)
        labels = batch.pop("labels")
        tokens = int(batch["attention_mask"].sum()) / batch_size
        with accelerator.autocast():
            loss, n_tokens, _ = token_loss(model(**batch).logits, labels)
        (loss / max(1, n_tokens)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = now(device) - start
    peak = peak_memory_gib(device)
    del model, loaded, optimizer, params, batch, loss
    free_memory()
    return {"peak_gib": peak, "samples_per_s": steps * batch_size / seconds, "tokens_per_sample": tokens}


def measure_ppo(cfg, device: str, *, repeats: int = 1) -> dict:
    """Peak memory of a PPO rollout step over ``env.n_envs`` envs plus an update over its samples
    (``vlmppo.benchmark``'s rollout and update measurements, answers forced to ``ppo.max_new_tokens``)."""
    from vlmppo.accel import make_accelerator, precision_for
    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.benchmark.runner import AnswerLengths
    from vlmppo.benchmark.update import measure_update
    from vlmppo.rl.startup import build_policy

    torch.manual_seed(cfg.run.seed)
    reset_peak_memory(device)
    accelerator = make_accelerator(device, precision_for(cfg.ppo.mixed_precision, device))
    policy = build_policy(cfg, device, accelerator=accelerator)
    policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, None, cfg.run.seed)
    loaded_peak = peak_memory_gib(device)
    recorded: list = []
    try:
        rollout = measure_rollout(policy, cfg, cfg.env.n_envs, repeats=repeats, keep=recorded)
        update = measure_update(policy, cfg, recorded, repeats=1)
    finally:
        decoder = policy.decoder
        del policy, recorded
        free_memory()
    peaks = [p for p in (loaded_peak, rollout.peak_gib, update.peak_gib) if p is not None]
    return {
        "peak_gib": max(peaks) if peaks else None,
        "env_steps_per_s": rollout.env_steps_per_s,
        "samples_per_s": update.samples_per_s,
        "tokens_per_sample": rollout.prompt_tokens + cfg.ppo.max_new_tokens,
        "decoder": decoder,
        "rollout_peak_gib": rollout.peak_gib,
        "update_peak_gib": update.peak_gib,
    }


def measure_stage(case: str, stage: str, cfg, device: str, cap_gib: float | None, folder: Path) -> FitRow:
    """One stage of one setting under ``cap_gib`` (None: the whole card); OOM and errors become the row's
    status. The estimate is the dry-run's (``estimate_ppo_memory`` / ``estimate_sft_memory``)."""
    from vlmppo.memory import estimate_ppo_memory, estimate_sft_memory
    from vlmppo.sysinfo import apply_gpu_memory_cap

    est = (estimate_sft_memory if stage == "sft" else estimate_ppo_memory)(cfg)
    row = FitRow(case, stage, "ok", cap_gib, None, est.peak_gb if est else None)
    free_memory()  # first: cached blocks of the last stage would count against the cap
    if device == "cuda":
        row.start_gib = torch.cuda.memory_allocated() / 2**30
        if cap_gib is None:
            torch.cuda.set_per_process_memory_fraction(1.0)
        else:
            apply_gpu_memory_cap(cap_gib)
    started = time.perf_counter()
    try:
        out = measure_sft(cfg, device, folder) if stage == "sft" else measure_ppo(cfg, device)
        for key in ("peak_gib", "samples_per_s", "env_steps_per_s", "tokens_per_sample", "decoder"):
            setattr(row, key, out.get(key))
        if stage == "ppo":
            row.note = f"rollout peak {out['rollout_peak_gib'] or 0:.1f}, update peak {out['update_peak_gib'] or 0:.1f}"
    except torch.OutOfMemoryError as exc:
        row.status, row.note = "oom", str(exc).splitlines()[0][:200]
        row.peak_gib = peak_memory_gib(device)
    except Exception as exc:  # a measurement that fails is reported, and the others still run
        row.status, row.note = (
            "error",
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
        )
    finally:
        free_memory()
        if device == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0)
    row.seconds = round(time.perf_counter() - started, 1)
    return row
