"""Host time of a PPO rollout step outside the model calls, per part, before and after the host-side work of
issue 18 (processed-frame cache, drawn-frame cache, batched answer offsets), on this machine's CPU.

Parts, per step of ``--n-envs`` envs (NumberLine, the paper's prompt), median milliseconds over the timed
steps (the envs advance between steps, so the frames are those a rollout sees):

* ``env step``: ``VecEnv.step`` with random actions (rules, drawing the frames);
* ``build_inputs <family>``: chat template, image processor and tokenizer of ``ActorCritic.sample`` for
  the processor of the shape the GPU figures use (Qwen2-VL-2B pixel budget, Qwen2.5-VL-3B, LLaVA-1.5
  336 px, LLaVA-NeXT 336 px with its grid of views); ``image processor <family>`` is its image part alone;
* ``answers random`` / ``answers trained``: ``mark_answers`` (parse, token offsets, masks, old log-prob) of
  128-token random-weight answers (byte soup) / of well-formed answers.

"before" runs the same data through the code as it was: no caches, offsets decoded row by row through
``tokenizer.decode``, transformers' M-RoPE index on the batch's device (``M-RoPE index``: 2B-shaped
prompts through the tiny Qwen2-VL's ``get_rope_index``). Each "after" output is checked equal to the "before" one (bit for bit) while timing.

    python bench/rollout_host.py                       # 128 envs, 4 timed steps; ~2-4 min on 2 busy cores
    python bench/rollout_host.py --n-envs 16 --steps 2 --families qwen2-vl   # quick
    python bench/rollout_host.py --device cuda --out DIR   # GPU host: adds the image processor on the GPU

With ``--device cuda`` (a torchvision image processor there) it also reports ``build_inputs <family>
on-gpu`` (``process_images_on``), the largest difference of those pixels from the host's, and checks that
cached and uncached outputs are identical on both devices.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import traceback
from pathlib import Path

import numpy as np
import torch

SHAPES = {  # family -> how the benchmark shape sets the tiny processor (models/shapes.py)
    "qwen2-vl": "qwen2-vl-2b",
    "qwen2.5-vl": "qwen2.5-vl-3b",
    "llava": None,
    "llava-next": "llava-next-mistral-7b",
}


def shape_processor(family_name: str):
    """A ``LoadedModel`` without weights: the tiny model's processor set up as the benchmark shape's."""
    from vlmppo.models.loading import LoadedModel
    from vlmppo.models.processors import load_processor
    from vlmppo.models.shapes import KNOWN_RELEASES, use_clip_views
    from vlmppo.models.tiny import get_family, resolve_model_path

    family = get_family(family_name)
    processor = load_processor(resolve_model_path(f"tiny:{family_name}"), family)
    shape = next((s for s in KNOWN_RELEASES if s.name == SHAPES[family_name]), None)
    if family_name.startswith("qwen"):
        family.set_pixel_budget(processor.image_processor, shape.min_pixels, shape.max_pixels)
    elif shape is not None:
        use_clip_views(processor, shape)
    else:  # LLaVA-1.5: 336 px CLIP views
        processor.image_processor.size = {"shortest_edge": 336}
        processor.image_processor.crop_size = {"height": 336, "width": 336}
        processor.patch_size = 14
    return LoadedModel(None, processor, processor.tokenizer, family, f"shape:{family_name}")


def rollout_frames(n_envs: int, steps: int, seed: int = 0):
    """Frames and infos of ``steps + 1`` successive steps of ``n_envs`` NumberLine envs (random actions)."""
    from vlmppo.envs import make_vec_env

    vec = make_vec_env("gym_cards/NumberLine-v0", n_envs, seed, prompt="rl4vlm")
    rng = np.random.default_rng(seed)
    obs, infos = vec.reset()
    out = [(obs, infos)]
    for _ in range(steps):
        obs, _, _, _, infos = vec.step(rng.integers(0, 2, size=n_envs).tolist())
        out.append((obs, infos))
    return vec.adapter, out


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median milliseconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), result


def env_step_ms(n_envs: int, steps: int, cached: bool) -> float:
    """Median ms of ``VecEnv.step`` over ``steps`` steps, drawing every frame (before) or keeping them."""
    from vlmppo.envs import base, make_vec_env

    saved = base.FrameEnv._frame
    if not cached:
        base.FrameEnv._frame = lambda self: self._draw()  # the frame drawn each time, as before
    try:
        vec = make_vec_env("gym_cards/NumberLine-v0", n_envs, 1, prompt="rl4vlm")
        vec.reset()
        rng = np.random.default_rng(1)
        vec.step(rng.integers(0, 2, size=n_envs).tolist())  # fonts loaded, first frames kept
        times = [
            timed(lambda: vec.step(rng.integers(0, 2, size=n_envs).tolist()), 1)[0] for _ in range(steps)
        ]
    finally:
        base.FrameEnv._frame = saved
    return statistics.median(times)


def same_batch(a, b) -> bool:
    return list(a.keys()) == list(b.keys()) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def build_inputs_ms(loaded, adapter, frames, *, cached: bool, image_only: bool = False):
    """Median ms of ``build_inputs`` (or of the image processor alone) over the steps after the first (the
    cache warms on the first, as in a rollout), and the outputs of each step."""
    from vlmppo.models import frame_cache
    from vlmppo.models.inputs import build_inputs, to_pil
    from vlmppo.rl.rollout import prompts_for

    frame_cache.set_max_bytes(frame_cache.DEFAULT_MAX_BYTES if cached else 0)
    frame_cache.cache_of(loaded.processor.image_processor).clear()
    times, outputs = [], []
    try:
        for step, (obs, infos) in enumerate(frames):
            pil = [to_pil(o) for o in obs]
            if image_only:
                with frame_cache.cached_processing(loaded.processor, loaded.frame_device) as processor:
                    ms, out = timed(lambda p=processor, f=pil: p.image_processor(f, return_tensors="pt"), 1)
            else:
                prompts = prompts_for(adapter, infos)
                ms, out = timed(lambda f=pil, p=prompts: build_inputs(loaded, f, p), 1)
            outputs.append(out)
            if step > 0:
                times.append(ms)
    finally:
        frame_cache.set_max_bytes(frame_cache.DEFAULT_MAX_BYTES)
    return statistics.median(times), outputs


def key_mask_before(offsets, key_start, thought_mask):
    """``action_key_mask`` as it was: token by token."""
    key = torch.zeros_like(thought_mask)
    if key_start is not None:
        for i, (_, end) in enumerate(offsets):
            key[i] = bool(thought_mask[i]) and end > key_start
    return key


def lower_before(text: str) -> str:
    """``rl4vlm._lower_same_length`` as it was: character by character."""
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def marks_before(tokenizer, adapter, rngs, texts, answers, answer_mask, token_logp, ppo):
    """``mark_answers`` as the rollout did it before: every row's offsets through ``tokenizer.decode``, the
    key mask token by token, the paper's parser lowering character by character."""
    from vlmppo.envs import rl4vlm

    saved, rl4vlm._lower_same_length = rl4vlm._lower_same_length, lower_before
    try:
        return _marks_before(tokenizer, adapter, rngs, texts, answers, answer_mask, token_logp, ppo)
    finally:
        rl4vlm._lower_same_length = saved


def _marks_before(tokenizer, adapter, rngs, texts, answers, answer_mask, token_logp, ppo):
    from vlmppo.rl.logprob import action_key_start, action_token_mask, mixed_action_logprob

    masks = {name: torch.zeros_like(answer_mask) for name in ("thought", "action", "key")}
    old_logp, actions, invalid, eos = torch.zeros(len(texts)), [], [], []
    for row, text in enumerate(texts):
        ids = answers[row][answer_mask[row]].tolist()
        parsed = adapter.parse(text, rngs[row])
        body = ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids
        decoded = tokenizer.decode(body, skip_special_tokens=True)
        encoded = tokenizer(decoded, add_special_tokens=False, return_offsets_mapping=True)
        if encoded["input_ids"] == body:
            offsets = [tuple(pair) for pair in encoded["offset_mapping"]]
        else:
            offsets, previous = [], ""
            for end in range(1, len(ids) + 1):
                now = tokenizer.decode(ids[:end], skip_special_tokens=True)
                offsets.append(
                    (len(previous), len(now)) if now.startswith(previous) else (len(now), len(now))
                )
                previous = now
        thought, action = action_token_mask(offsets, parsed.span, len(ids))
        key = key_mask_before(offsets, action_key_start(text, parsed.span), thought)
        thought = thought & ~key
        old_logp[row] = mixed_action_logprob(
            token_logp[row : row + 1, : len(ids)], thought[None], action[None], ppo.thought_coef, key[None],
            ppo.action_key_coef,
        )[0]  # fmt: skip
        for name, mask in (("thought", thought), ("action", action), ("key", key)):
            masks[name][row, : len(ids)] = mask
        actions.append(parsed.index)
        invalid.append(bool(parsed.invalid))
        eos.append(bool(ids) and ids[-1] == tokenizer.eos_token_id)
    return masks, old_logp, actions, torch.tensor(invalid), torch.tensor(eos)


def answers_for(tokenizer, adapter, n_envs: int, length: int, trained: bool):
    """[B, length] answers as the rollout holds them: random ids (an untrained model) or well-formed ones."""
    gen = torch.Generator().manual_seed(0)
    answers = torch.zeros(n_envs, length, dtype=torch.long)
    mask = torch.zeros(n_envs, length, dtype=torch.bool)
    for row in range(n_envs):
        if trained:
            text = adapter.format_answer(row % 2, f"the current number is {row % 6}, move on", {"current": row % 6,
                                                                                            "target": 3})  # fmt: skip
            ids = (tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id])[:length]
        else:
            ids = torch.randint(0, len(tokenizer), (length,), generator=gen).tolist()
        answers[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = True
    texts = tokenizer.batch_decode(
        answers.masked_fill(~mask, tokenizer.pad_token_id), skip_special_tokens=True
    )
    return texts, answers, mask, -torch.rand(n_envs, length, generator=gen) * 5


def answers_ms(loaded, adapter, n_envs: int, steps: int, trained: bool) -> dict:
    from vlmppo.config.schema import PpoConfig
    from vlmppo.rl.rollout import mark_answers

    ppo = PpoConfig(thought_coef=0.5)
    texts, answers, mask, logp = answers_for(loaded.tokenizer, adapter, n_envs, 128, trained)

    def rngs():
        return [np.random.default_rng([0, row]) for row in range(n_envs)]

    args = (loaded.tokenizer, adapter)
    before, old = timed(lambda: marks_before(*args, rngs(), texts, answers, mask, logp, ppo), steps)
    after, new = timed(lambda: mark_answers(*args, rngs(), texts, answers, mask, logp, ppo), steps)
    same = all(torch.equal(new[0][k], old[0][k]) for k in old[0]) and torch.equal(new[1], old[1])
    same = same and new[2] == old[2] and torch.equal(new[3], old[3]) and torch.equal(new[4], old[4])
    return {"before": before, "after": after, "identical": same}


def gpu_rows(loaded, adapter, frames, device: str) -> dict:
    """On a GPU host: the processed frames kept on the GPU (``frame_device``, what PPO does there) and the
    image processor itself on the GPU (``process_images_on``, torchvision): times, the largest difference
    of the GPU-processed pixels from the host's, and that cached = uncached everywhere."""
    from vlmppo.models.inputs import process_images_on

    host_ms, host = build_inputs_ms(loaded, adapter, frames, cached=False)
    loaded.frame_device = device
    try:
        kept_ms, kept = build_inputs_ms(loaded, adapter, frames, cached=True)
    finally:
        loaded.frame_device = None
    row = {"host ms": host_ms, "frames kept on gpu ms": kept_ms,
           "kept on gpu == host": all(same_batch(a, b) for a, b in zip(kept, host, strict=True))}  # fmt: skip
    if not process_images_on(loaded, device):
        row["on-gpu"] = (
            f"not a torchvision image processor ({type(loaded.processor.image_processor).__name__})"
        )
        return row
    try:
        plain_ms, plain = build_inputs_ms(loaded, adapter, frames, cached=False)
        cached_ms, cached = build_inputs_ms(loaded, adapter, frames, cached=True)
    finally:
        loaded.image_device = None
    pairs = list(zip(plain, host, strict=True))
    row["processed on gpu ms"], row["processed on gpu, cached ms"] = plain_ms, cached_ms
    row["max |gpu - host| pixel"] = max(
        float((p["pixel_values"].cpu() - h["pixel_values"]).abs().max()) for p, h in pairs
    )
    row["mean |gpu - host| pixel"] = statistics.mean(
        float((p["pixel_values"].cpu() - h["pixel_values"]).abs().mean()) for p, h in pairs
    )
    row["other keys equal"] = all(
        torch.equal(p[k].cpu(), h[k]) for p, h in pairs for k in h if k != "pixel_values"
    )
    row["cached == uncached on gpu"] = all(same_batch(a, b) for a, b in zip(cached, plain, strict=True))
    return row


def rope_ms(adapter, frames, device: str, steps: int) -> dict:
    """The M-RoPE index of a step's Qwen2-VL-2B-shaped prompts on ``device`` tensors: transformers'
    ``get_rope_index`` (before) against ``prompt_embeds.rope_index`` (after)."""
    from vlmppo.config.schema import ModelConfig
    from vlmppo.models import load_model
    from vlmppo.models.inputs import build_inputs, to_pil
    from vlmppo.models.prompt_embeds import backbone_of, rope_index
    from vlmppo.rl.rollout import prompts_for

    loaded = shape_processor("qwen2-vl")
    backbone = backbone_of(load_model(ModelConfig(family="qwen2-vl", path="tiny:qwen2-vl", lora=None)).model)
    obs, infos = frames[-1]
    batch = build_inputs(loaded, [to_pil(o) for o in obs], prompts_for(adapter, infos)).to(device)
    args = (batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"], batch["attention_mask"])
    before, old = timed(
        lambda: backbone.get_rope_index(args[0], args[1], image_grid_thw=args[2], attention_mask=args[3]),
        steps,
    )
    after, new = timed(lambda: rope_index(backbone, *args), steps)
    return {
        "before": before,
        "after": after,
        "identical": all(torch.equal(a, b) for a, b in zip(new, old, strict=True)),
    }


def transformers_rope_index(backbone, ids, token_types, grid, attention_mask):
    """The M-RoPE index as ``embed_prompts`` computed it before: transformers', on the batch's device."""
    return backbone.get_rope_index(ids, token_types, image_grid_thw=grid, attention_mask=attention_mask)


@contextlib.contextmanager
def code_before():
    """The rollout's host code as it was: no processed-frame cache (nor once-per-text tokenizing), every
    frame drawn, offsets decoded row by row."""
    from vlmppo.envs import base
    from vlmppo.models import frame_cache, prompt_embeds
    from vlmppo.rl import rollout

    saved = base.FrameEnv._frame, rollout.mark_answers
    saved = (*saved, prompt_embeds.rope_index)
    frame_cache.set_max_bytes(0)
    base.FrameEnv._frame = lambda self: self._draw()
    rollout.mark_answers = marks_before
    prompt_embeds.rope_index = transformers_rope_index
    try:
        yield
    finally:
        base.FrameEnv._frame, rollout.mark_answers, prompt_embeds.rope_index = saved
        frame_cache.set_max_bytes(frame_cache.DEFAULT_MAX_BYTES)


def rollout_rows(args) -> list[dict]:
    """``measure_rollout`` (the PPO loop's ``rollout_step`` + env step; answers forced to
    ``--max-new-tokens``) with the code before and after, on one loaded policy, alternating."""
    from vlmppo.benchmark.rollout import measure_rollout
    from vlmppo.benchmark.runner import AnswerLengths, bench_policy
    from vlmppo.config import load_config

    cfg = load_config(args.preset, None, [f"ppo.max_new_tokens={args.max_new_tokens}"])
    cfg, policy = bench_policy(cfg, args.shape, args.device)
    policy.forced_lengths = AnswerLengths(cfg.ppo.max_new_tokens, None, cfg.run.seed)
    policy.decoder = args.decoder or policy.decoder
    out = []
    for label in ("before", "after", "before", "after")[: 2 * args.rounds]:
        with code_before() if label == "before" else contextlib.nullcontext():
            r = measure_rollout(policy, cfg, args.n_envs, repeats=args.steps)
        out.append({"code": label, "decoder": r.decoder, "n_envs": r.n_envs, "env-steps/s": round(r.env_steps_per_s, 2),
                    "step s": round(r.seconds / r.steps, 3), "generate s": round(r.generate_s / r.steps, 3),
                    "rest of sample s": round(r.inputs_s / r.steps, 3), "score s": round(r.score_s / r.steps, 3),
                    "parse + env s": round(r.host_s / r.steps, 3), "vision s": round(r.vision_s or 0, 3)})  # fmt: skip
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-envs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per part (after one warm-up step)")
    ap.add_argument("--families", default="qwen2-vl,qwen2.5-vl,llava,llava-next")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device-rows", action="store_true", help="the GPU rows on --device cpu (a dry run)")
    ap.add_argument(
        "--rollout", action="store_true", help="also time the PPO loop's rollout step, end to end"
    )
    ap.add_argument("--rounds", type=int, default=1, help="before/after rounds of --rollout")
    ap.add_argument("--preset", default="numberline-qwen")
    ap.add_argument("--shape", default="qwen2-vl-2b", help="--rollout's model: a bench shape or tiny")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument(
        "--decoder", help="--rollout's model.decoder (default: static on a GPU, generate on a CPU)"
    )
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows, checks = [], {}

    def row(part, before, after, identical=True):
        rows.append(
            {"part": part, "before ms": round(before, 1), "after ms": round(after, 1), "identical": identical}
        )
        print(
            f"{part:34s} before {before:9.1f} ms   after {after:9.1f} ms   identical {identical}", flush=True
        )

    row("env step", env_step_ms(args.n_envs, args.steps, False), env_step_ms(args.n_envs, args.steps, True))
    adapter, frames = rollout_frames(args.n_envs, args.steps)
    for name in args.families.split(","):
        loaded = shape_processor(name)
        for image_only in (True, False):
            label = f"{'image processor' if image_only else 'build_inputs'} {name}"
            before, old = build_inputs_ms(loaded, adapter, frames, cached=False, image_only=image_only)
            after, new = build_inputs_ms(loaded, adapter, frames, cached=True, image_only=image_only)
            row(label, before, after, all(same_batch(a, b) for a, b in zip(new, old, strict=True)))
        if args.device.startswith("cuda") or args.device_rows:
            try:  # a check that fails on that machine is a result too; the other figures still come
                checks[name] = gpu_rows(loaded, adapter, frames, args.device)
            except Exception as exc:
                traceback.print_exc()
                checks[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            print(name, json.dumps(checks[name]), flush=True)
    result = rope_ms(adapter, frames, args.device, args.steps)
    row(f"M-RoPE index ({args.device} tensors)", result["before"], result["after"], result["identical"])
    loaded = shape_processor(args.families.split(",")[0])
    for trained in (False, True):
        result = answers_ms(loaded, adapter, args.n_envs, args.steps, trained)
        row(
            f"answers {'trained' if trained else 'random'}",
            result["before"],
            result["after"],
            result["identical"],
        )
    try:
        rollout = rollout_rows(args) if args.rollout else []
    except Exception as exc:
        traceback.print_exc()
        rollout = [{"error": f"{type(exc).__name__}: {exc}"[:1000]}]
    table = ["| part | before ms | after ms | identical |", "|---|---|---|---|"]
    table += [f"| {r['part']} | {r['before ms']} | {r['after ms']} | {r['identical']} |" for r in rows]
    print("\n".join(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"n_envs": args.n_envs, "steps": args.steps, "device": args.device, "torch": torch.__version__,
                "threads": torch.get_num_threads()}  # fmt: skip
        summary = {"meta": meta, "rows": rows, "gpu": checks, "rollout": rollout}
        (args.out / "rollout_host.json").write_text(json.dumps(summary, indent=1))
        (args.out / "rollout_host.md").write_text(
            "\n".join(table) + "\n\n" + json.dumps(summary, indent=1) + "\n"
        )
    if not all(r["identical"] for r in rows) or any(
        c.get("cached == uncached on gpu") is False or c.get("kept on gpu == host") is False
        for c in checks.values()
    ):
        raise SystemExit("an output differs from the code before: see the table")


if __name__ == "__main__":
    main()
