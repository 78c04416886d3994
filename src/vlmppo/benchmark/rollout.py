"""Rollout throughput: the PPO loop's own ``rollout_step`` (sample, score, parse) plus the env step.

Two ways to run the same envs are measured in one process, on the same loaded model:

* batch-1 sequential (RL4VLM): one env, one prompt per ``generate`` and one per scoring pass;
* batched (vlmppo): all ``n_envs`` prompts in one ``generate`` and one scoring pass.

Env-steps/s counts env transitions; generated tokens/s counts answer tokens kept (eos included).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmppo.benchmark.timing import now, peak_memory_gib, reset_peak_memory, timed_policy


@dataclass
class RolloutRow:
    """One rollout measurement (the timed steps only; warm-up steps excluded).

    Attributes:
        mode: "batch-1 sequential" or "batched".
        decoder: ``model.decoder`` of the row: "generate" (transformers) or "static".
        n_envs: Envs per ``generate`` call.
        steps: Timed ``rollout_step`` calls.
        env_steps: Env transitions in them (steps * n_envs).
        gen_tokens: Answer tokens generated in them.
        seconds: Wall-clock seconds of the timed steps (model, parsing and env step).
        generate_s / score_s: Inside ``model.generate`` and the shared prompt forward
            (``policy.prefill``) / inside ``policy.score`` (the teacher-forced pass).
        prefill_s: Of ``generate_s``, the shared prompt forward (0 when the decoder prefills itself).
        inputs_s: Rest of ``policy.sample``: processor (image resize, patches, tokenizing), decoding.
        host_s: Everything else: parsing, token offsets, per-step log-probs, env step and render.
        prompt_tokens: Mean prompt length in tokens (image tokens included).
        image_tokens: Image tokens per frame.
        peak_gib: Peak GPU memory allocated during the timed steps (None on CPU).
        positions: Answer positions decoded, summed over the timed steps (each step: its longest answer,
            the length the batch is decoded for; the prefill is one of them).
        floor_ms: The decode floor per step (``bench/floor.py``) at the row's batch; None if unknown.
        vision_s: One pass of the vision tower over a step's frames (the prefill and the scoring pass
            each run it once).
    """

    mode: str
    decoder: str
    n_envs: int
    steps: int
    env_steps: int
    gen_tokens: int
    seconds: float
    generate_s: float
    score_s: float
    inputs_s: float
    host_s: float
    prompt_tokens: float
    image_tokens: float
    peak_gib: float | None
    positions: int = 0
    floor_ms: float | None = None
    vision_s: float | None = None
    prefill_s: float = 0.0

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.seconds

    @property
    def ms_per_position(self) -> float:
        """Milliseconds of ``generate`` per decoded answer position (prefill included)."""
        return 1e3 * self.generate_s / max(1, self.positions)

    @property
    def gen_tokens_per_s(self) -> float:
        return self.gen_tokens / self.seconds


def make_bench_env(cfg, n_envs: int):
    """The preset's env, ``n_envs`` copies (``env.n_envs`` of the preset is not used)."""
    from vlmppo.envs import make_vec_env_from_config

    return make_vec_env_from_config(cfg.env, n_envs, cfg.run.seed)


def _prompt_stats(sampled, image_token_id: int | None) -> tuple[float, float]:
    prompt = sampled.attention_mask[:, : sampled.prompt_len]
    tokens = float(prompt.sum()) / prompt.shape[0]
    if image_token_id is None:
        return tokens, float("nan")
    images = sampled.sequences[:, : sampled.prompt_len] == image_token_id
    return tokens, float(images.sum()) / images.shape[0]


def measure_rollout(
    policy, cfg, n_envs: int, *, repeats: int, warmup: int = 1, keep=None, gpu_name: str | None = None
) -> RolloutRow:
    """Time `repeats` calls of ``rollout_step`` over `n_envs` envs, after `warmup` untimed ones.

    Args:
        policy: The ``ActorCritic`` (from ``build_policy``).
        cfg: The resolved config (env, ``ppo.temperature``, ``ppo.max_new_tokens``, ...).
        n_envs: Envs stepped together; 1 is the batch-1 sequential baseline.
        keep: A list that receives the timed steps' ``StepBatch`` records (data for the update benchmark).
        gpu_name: For the decode floor (``bench/floor.py``).
    """
    from vlmppo.benchmark.floor import decode_floor_ms
    from vlmppo.rl.rollout import rollout_step

    device = policy.device
    vec = make_bench_env(cfg, n_envs)
    obs, infos = vec.reset()
    image_token_id = getattr(policy.loaded.model.config, "image_token_id", None)
    env_steps = gen_tokens = positions = 0
    with timed_policy(policy, device) as clock:
        for i in range(warmup + repeats):
            if i == warmup:  # compile/autotune/allocator warm-up stays out of the figures
                clock.reset()
                reset_peak_memory(device)
                start = now(device)
            step = rollout_step(policy, vec, obs, infos, cfg)
            obs, _, _, _, infos = vec.step(step.actions)
            if i >= warmup:
                env_steps += len(step)
                gen_tokens += int(step.answer_lengths.sum())
                positions += int(step.answer_lengths.max())
                if keep is not None:
                    keep.append(step)
        seconds = now(device) - start
        sampled = clock.last_result["sample"]
        prompt_tokens, image_tokens = _prompt_stats(sampled, image_token_id)
        s = dict(clock.seconds)
    vec.close()
    sampler = policy.sampler.model if policy.sampler is not None else policy.loaded.model
    cached = sampled.prompt_len + positions / max(1, repeats) / 2  # mean cache length while decoding
    return RolloutRow(
        mode="batch-1 sequential" if n_envs == 1 else "batched",
        decoder=policy.decoder,
        n_envs=n_envs,
        steps=repeats,
        env_steps=env_steps,
        gen_tokens=gen_tokens,
        seconds=seconds,
        generate_s=s["generate"] + s.get("prefill", 0.0),
        prefill_s=s.get("prefill", 0.0),
        score_s=s["score"],
        inputs_s=s["sample"] - s["generate"] - s.get("prefill", 0.0),
        host_s=seconds - s["sample"] - s["score"],
        prompt_tokens=prompt_tokens,
        image_tokens=image_tokens,
        peak_gib=peak_memory_gib(device),
        positions=positions,
        floor_ms=decode_floor_ms(sampler, n_envs, cached, gpu_name),
        vision_s=time_vision_tower(policy, sampled),
    )


def time_vision_tower(policy, sampled) -> float:
    """Seconds of one vision-tower pass over ``sampled``'s frames (after one untimed pass)."""
    import torch

    extra = {k: v for k, v in sampled.extra.items() if k in ("pixel_values", "image_grid_thw", "image_sizes")}
    with torch.no_grad(), policy.autocast():
        policy.backbone.get_image_features(**extra)
        start = now(policy.device)
        policy.backbone.get_image_features(**extra)
        return now(policy.device) - start
