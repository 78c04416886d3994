"""Where an SFT step's time goes (issue 23): collation parts, the loader workers, the model step, end to end.

NumberLine SFT data is made through the product (``vlmppo pipeline --preset numberline-small --to preprocess``
with few episodes), then, on the preset's model (``small:qwen2-vl``, or ``tiny:qwen2-vl`` with DRY=1):

1. collation per sample, part by part, in this process on one thread: PNG decode, chat template, the image
   processor, the processor's text side (placeholder expansion + tokenizer), the answers appended; the whole
   collator without its cache, and with it (cold: first pass; warm: a later epoch);
2. the loader (``sft/loader.py``, the product's ``next_micro_batch``): micro-batches delivered per second by
   0..N worker processes, with and without the collator's cache, no model step in between;
3. the model step on one fixed batch (forward with the loss, backward, clip + AdamW), each part synchronised;
   on CUDA also the vision tower and the 3D-rope index alone, the vision tower with one batched attention call
   instead of stock transformers' per-image loop (a bench-only patch, to size that loop), and a profile;
4. end to end: the product's ``train_step`` (loader workers + model) with and without the cache.

    bash bench/gpu_sft_throughput.sh               # GPU (brings the wheels the image lacks; OUT=dir)
    DRY=1 python bench/sft_throughput.py           # CPU, tiny model, toy sizes (~1-2 min on 2 busy cores)
    DRY=1 MODEL=small python bench/sft_throughput.py   # CPU: the small model's collation figures

Knobs: EPISODES (collected, default 200; DRY 20), STEPS (timed steps/batches per row, default 30; DRY 3),
WORKERS (loader settings to compare, default "0,2,8"; DRY "0,1"), BATCH (default the preset's 64; DRY 8), ONLY
(sections: collation,loader,model_step,end_to_end,ops).
Writes ``sft-throughput.md`` / ``.json`` (and on CUDA ``sft-profile.txt``) to $OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

DRY = os.environ.get("DRY") == "1"
MODEL = os.environ.get("MODEL", "tiny" if DRY else "small")
EPISODES = int(os.environ.get("EPISODES", "20" if DRY else "200"))
STEPS = int(os.environ.get("STEPS", "3" if DRY else "30"))
WORKERS = [int(w) for w in os.environ.get("WORKERS", "0,1" if DRY else "0,2,8").split(",")]
BATCH = int(os.environ.get("BATCH", "8" if DRY else "64"))
ONLY = [name for name in os.environ.get("ONLY", "").split(",") if name]  # sections to measure (default: all)
OUT = Path(os.environ.get("OUT", "bench/out"))
RUNS = Path(os.environ.get("RUNS", "/tmp/sft-throughput-runs"))
CUDA = torch.cuda.is_available() and not DRY
DEVICE = "cuda" if CUDA else "cpu"
STARTED = time.perf_counter()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(fn, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` (synchronised), the best of ``repeats``."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def make_data() -> None:
    overrides = [f"collect.episodes={EPISODES}", f"run.output_dir={RUNS}", "run.name=bench", "env.n_envs=8"]
    if DRY:
        overrides.append("run.device=cpu")
    command = [sys.executable, "-m", "vlmppo", "pipeline", "--preset", "numberline-small", "--to", "preprocess",
               *overrides]  # fmt: skip
    shutil.rmtree(RUNS / "bench", ignore_errors=True)  # a fresh run: the pipeline skips finished stages
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(
            f"data stage failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    print(f"data: {EPISODES} episodes in {time.perf_counter() - started:.1f} s", flush=True)


def config(**sft):
    from vlmppo.config import load_config

    overrides = [f"run.output_dir={RUNS}", "run.name=bench", f"run.device={DEVICE}", f"sft.batch_size={BATCH}",
                 "sft.eval_every=100000", "sft.save_every=100000"]  # fmt: skip
    if MODEL == "tiny":
        overrides += ["model.path=tiny:qwen2-vl", "model.dtype=auto"]
    overrides += [f"sft.{k}={v}" for k, v in sft.items()]
    return load_config("numberline-small", overrides=overrides)


def collation_rows(run) -> list[dict]:
    """Per-sample milliseconds of each part of collating, on the run's processor, one thread."""
    from vlmppo.models.inputs import _append_answers, chat_prompt
    from vlmppo.sft.dataset import SftCollator, _open_rgb

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded, examples = run.loaded, run.train
    n = min(len(examples), 4 * BATCH)
    chunks = [examples[i : i + BATCH] for i in range(0, n, BATCH)]
    n = sum(len(c) for c in chunks)
    parts: dict[str, float] = {}

    def add(name, seconds):
        parts[name] = parts.get(name, 0.0) + seconds

    for chunk in chunks:
        start = time.perf_counter()
        images = [_open_rgb(e) for e in chunk]
        add("PNG decode + RGB", time.perf_counter() - start)
        start = time.perf_counter()
        texts = [chat_prompt(loaded, e.prompt) for e in chunk]
        add("chat template", time.perf_counter() - start)
        start = time.perf_counter()
        loaded.processor.image_processor(images=images, return_tensors="pt")
        image_s = time.perf_counter() - start
        add("image processor (resize, normalise, patches)", image_s)
        start = time.perf_counter()
        batch = loaded.processor(
            images=images, text=texts, padding=True, padding_side="left", return_tensors="pt"
        )
        add("processor text side (placeholders, tokenizer)", time.perf_counter() - start - image_s)
        start = time.perf_counter()
        _append_answers(loaded, batch, [e.answer for e in chunk])
        add("answers appended (tokenizer, re-pad)", time.perf_counter() - start)
        start = time.perf_counter()
        loaded.family.position_ids(batch, loaded.processor.image_processor)
        add("M-RoPE position ids (new: in the collator)", time.perf_counter() - start)
    plain, cached = SftCollator(loaded, 768, cache=False, positions=False), SftCollator(loaded, 768)
    add("= before: collator, no cache", sum(timed(lambda c=c: plain(c)) for c in chunks))
    add("= after, first epoch: cache cold, + position ids", sum(timed(lambda c=c: cached(c)) for c in chunks))
    add(
        "= after, later epochs: cache warm, + position ids", sum(timed(lambda c=c: cached(c)) for c in chunks)
    )
    rows = [{"part": name, "ms_per_sample": round(1e3 * s / n, 3)} for name, s in parts.items()]
    rows.append({"part": f"(cache: {len(cached.cache.pixels.entries)} image entries, "
                 f"{cached.cache.pixels.bytes / 2**20:.1f} MiB; {n} samples)", "ms_per_sample": None})  # fmt: skip
    torch.set_num_threads(threads)
    return rows


def variant(run, after: bool) -> None:
    """Before (the collator without cache or position ids, transformers' own vision classes) or after (the
    product as it is now): the loader builds its collator in ``MicroBatches``, the model is changed in place."""
    import functools

    from transformers.models.qwen2_vl import modeling_qwen2_vl as qwen

    import vlmppo.sft.loader as loader
    from vlmppo.models.qwen_vision import speed_up_vision
    from vlmppo.sft.dataset import SftCollator

    loader.SftCollator = functools.partial(SftCollator, cache=after, positions=after)
    model = run.accelerator.unwrap_model(run.model)
    if after:
        speed_up_vision(model)
    else:
        model.model.visual.__class__ = qwen.Qwen2VisionTransformerPretrainedModel
        for block in model.model.visual.blocks:
            block.attn.__class__ = qwen.VisionAttention


def restart_loader(run, workers: int) -> None:
    from vlmppo.sft.loader import close_loader

    close_loader(run)
    run.cfg = run.cfg.model_copy(update={"sft": run.cfg.sft.model_copy(update={"loader_workers": workers})})


def loader_rows(run) -> list[dict]:
    """Samples/s the loader delivers (no model step), per worker count, with and without the cache."""
    from vlmppo.sft.loader import next_micro_batch

    rows = []
    for workers in WORKERS:
        for after in (False, True):
            variant(run, after)
            restart_loader(run, workers)
            start = time.perf_counter()
            next_micro_batch(run)
            first = time.perf_counter() - start
            start = time.perf_counter()
            samples = sum(len(next_micro_batch(run)["input_ids"]) for _ in range(STEPS))
            seconds = time.perf_counter() - start
            rows.append({"workers": workers, "version": "after" if after else "before",
                         "first_batch_s": round(first, 2),
                         "ms_per_batch": round(1e3 * seconds / STEPS, 1),
                         "samples_per_s": round(samples / seconds, 1)})  # fmt: skip
            print("loader", rows[-1], flush=True)
    variant(run, True)
    return rows


def model_step_rows(run) -> list[dict]:
    """Milliseconds of each part of a training step on one fixed micro-batch (already collated), before and
    after; then the vision tower and the position ids alone."""
    from vlmppo.sft.dataset import SftCollator
    from vlmppo.sft.loss import token_loss

    batch = SftCollator(run.loaded, 768)(run.train[:BATCH])
    rows, state = [], {}

    def h2d():
        state["batch"] = batch.to(run.accelerator.device, non_blocking=True)

    def forward():
        inputs = dict(state["batch"])
        labels = inputs.pop("labels")
        if not state["after"]:
            inputs.pop("position_ids", None)
        state["loss"] = token_loss(run.model(**inputs).logits, labels)[0]

    def backward():
        run.accelerator.backward(state["loss"] / 1000)

    def optimizer():
        run.accelerator.clip_grad_norm_(run.params, 1.0)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)

    for after in (False, True):
        variant(run, after)
        state["after"], parts = after, {}
        for step in range(STEPS + 2):
            for name, fn in (("host to device", h2d), ("forward + loss", forward), ("backward", backward),
                             ("clip + AdamW", optimizer)):  # fmt: skip
                seconds = timed(fn)
                if step >= 2:  # warm-up: allocator, autotuning
                    parts[name] = parts.get(name, 0.0) + seconds
        total = sum(parts.values())
        version = "after" if after else "before"
        rows += [
            {"version": version, "part": k, "ms_per_step": round(1e3 * v / STEPS, 2)}
            for k, v in parts.items()
        ]
        rows.append({"version": version, "part": "= model step", "ms_per_step": round(1e3 * total / STEPS, 2),
                     "samples_per_s": round(BATCH * STEPS / total, 1)})  # fmt: skip
    return rows + component_rows(run, state["batch"])


def component_rows(run, batch) -> list[dict]:
    """The vision tower fwd+bwd (stock classes, ours) and the M-RoPE position ids (the model's, on the device)."""
    inner = run.accelerator.unwrap_model(run.model).model
    rows = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else torch.autocast("cpu", enabled=False)

    def vision():
        with autocast:
            out = inner.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
        out.float().sum().backward()

    def rope():
        with torch.no_grad():
            inner.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"],
                                 attention_mask=batch["attention_mask"])  # fmt: skip

    outputs = []
    for after in (False, True):
        variant(run, after)
        timed(vision)
        rows.append({"version": "after" if after else "before", "part": "vision tower fwd+bwd alone",
                     "ms_per_step": round(1e3 * timed(vision, STEPS), 2)})  # fmt: skip
        with torch.no_grad(), autocast:
            outputs.append(
                inner.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
            )
    rows.append({"version": "after vs before", "part": "vision features: max abs difference",
                 "ms_per_step": float((outputs[1].float() - outputs[0].float()).abs().max())})  # fmt: skip
    timed(rope)
    rows.append({"version": "before", "part": "M-RoPE position ids in the forward (get_rope_index)",
                 "ms_per_step": round(1e3 * timed(rope, STEPS), 2)})  # fmt: skip
    run.optimizer.zero_grad(set_to_none=True)
    return rows


def end_to_end_rows(run) -> list[dict]:
    """The product's ``train_step`` (loader + model), samples/s, with and without the collator cache."""
    from vlmppo.sft.steps import train_step

    workers = WORKERS[-1]
    rows = []
    for after in (False, True):
        variant(run, after)
        restart_loader(run, workers)
        for _ in range(3):  # warm-up: the workers start, the first batches
            train_step(run)
        sync()
        start = time.perf_counter()
        for _ in range(STEPS):
            train_step(run)
        seconds, samples = time.perf_counter() - start, STEPS * BATCH
        rows.append({"workers": workers, "version": "after" if after else "before",
                     "ms_per_step": round(1e3 * seconds / STEPS, 1),
                     "samples_per_s": round(samples / seconds, 1)})  # fmt: skip
        print("end to end", rows[-1], flush=True)
    variant(run, True)
    return rows


def profile(run) -> tuple[str, list[dict]]:
    """Profiles of 3 product steps before and after: CUDA kernels launched per step, CPU op calls, top ops."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from vlmppo.sft.steps import train_step

    text, rows = [], []
    for after in (False, True):
        variant(run, after)
        restart_loader(run, WORKERS[-1])
        train_step(run)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(3):
                train_step(run)
            sync()
        averages = prof.key_averages()
        kernels = sum(e.count for e in averages if e.device_type.name == "CUDA")
        ops = sum(e.count for e in averages if e.key.startswith("aten::"))
        version = "after" if after else "before"
        rows.append(
            {"version": version, "cuda_kernels_per_step": kernels // 3, "aten_calls_per_step": ops // 3}
        )
        text += [f"## {version}: {rows[-1]}", averages.table(sort_by="self_cpu_time_total", row_limit=25)]
        if CUDA:
            text.append(averages.table(sort_by="self_cuda_time_total", row_limit=15))
    variant(run, True)
    return "\n".join(text), rows


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


SECTIONS = (
    ("collation", "Collation per sample (one process, one thread)"),
    ("loader", f"Loader alone ({STEPS} micro-batches of {BATCH}, no model step)"),
    ("model_step", "Model step on one fixed batch (each part synchronised)"),
    ("end_to_end", "End to end: the product's train_step (loader workers + model)"),
    ("ops", "Ops per step (profiler): a step of many tiny kernels is bound by the CPU launching them"),
)


def save(report: dict) -> None:
    """The tables so far (each section is written as soon as it is measured: a failure keeps the others)."""
    text = [f"# SFT throughput: {MODEL}:qwen2-vl on {report['gpu']}, batch {BATCH}, {report['train_samples']} "
            f"NumberLine samples, {os.cpu_count()} CPUs, attention {report['attn']}", "",
            "before: the collator without its cache or position ids, transformers' own vision classes; "
            "after: the product as it is now.", ""]  # fmt: skip
    for key, title in SECTIONS:
        if key in report:
            text += [
                f"## {title}",
                "",
                table(report[key]) if isinstance(report[key], list) else report[key],
                "",
            ]
    (OUT / "sft-throughput.md").write_text(
        "\n".join(text) + f"\nwall {time.perf_counter() - STARTED:.0f} s\n"
    )
    (OUT / "sft-throughput.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    from vlmppo.sft.loader import close_loader
    from vlmppo.sft.startup import start_run

    OUT.mkdir(parents=True, exist_ok=True)
    make_data()
    run = start_run(config(), resume=None)
    report = {"model": MODEL, "device": DEVICE, "gpu": torch.cuda.get_device_name() if CUDA else "none (CPU)",
              "batch": BATCH, "episodes": EPISODES, "train_samples": len(run.train), "cpu_count": os.cpu_count(),
              "attn": run.accelerator.unwrap_model(run.model).config._attn_implementation}  # fmt: skip
    print(report, flush=True)
    for key, measure in (("collation", collation_rows), ("loader", loader_rows), ("model_step", model_step_rows),
                         ("end_to_end", end_to_end_rows), ("ops", profile)):  # fmt: skip
        if ONLY and key not in ONLY:
            continue
        try:
            result = measure(run)
        except Exception as exc:  # keep the other sections
            result = f"failed: {type(exc).__name__}: {exc}"
            print(traceback.format_exc(), flush=True)
        if key == "ops" and isinstance(result, tuple):
            (OUT / "sft-profile.txt").write_text(result[0])
            result = result[1]
        report[key] = result
        save(report)
        print(f"## {key}\n" + (table(result) if isinstance(result, list) else result), flush=True)
    close_loader(run)
    report["wall_s"] = round(time.perf_counter() - STARTED, 1)
    save(report)
    print((OUT / "sft-throughput.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
