"""A PPO run's start: the checks, the actor-critic, its optimizer and LR schedule, the envs — fresh or resumed.

``start_run`` is what ``train_ppo`` does before its loop; what it returns (``PpoRun``) is what the loop works
with and what a checkpoint saves (``rl/checkpointing.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlmppo.config import Config, run_dir
from vlmppo.errors import CheckpointError, ConfigError
from vlmppo.rl.policy import REFERENCE_ADAPTER, ActorCritic, ValueHead, hidden_size
from vlmppo.rl.run import PpoRun
from vlmppo.rl.update import BadMinibatchGuard
from vlmppo.sysinfo import resolve_device

if TYPE_CHECKING:
    from accelerate import Accelerator


INIT_CHOICES = "null (start from model.path), sft, ppo, last or a checkpoint folder"


def start_run(cfg: Config, resume: str | None) -> PpoRun:
    """Everything the loop needs, after every check a user can fail: a launch this machine can run, a LoRA
    model for a KL penalty, no fresh run over an existing one, no resume that changes what the checkpoint
    fixes.

    The order of what draws random numbers is that of a fresh run, and a resume restores every stream
    last, so 4 updates straight equal 2 updates + resume + 2. Under a launcher (several processes) every
    rank builds the same model and optimizer (same seed; DDP also broadcasts rank 0's weights), then its
    own envs and sampling streams (``rl/distributed.py``).
    """
    from vlmppo.checkpoints import latest_checkpoint
    from vlmppo.config.plan import ppo_counts
    from vlmppo.models.quantization import check_quantization
    from vlmppo.rl.checkpointing import check_resume_config, find_resume_checkpoint, restore_run
    from vlmppo.rl.schedule import make_cosine_scheduler
    from vlmppo.sft.launching import check_ppo_launch

    ppo = cfg.ppo
    check_ppo_launch(cfg.ppo.launch, launched_world())
    check_kl_reference(cfg)
    check_quantization(cfg.model, resolve_device(cfg))  # before the run folder or any weight
    accelerator = ppo_accelerator(cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    device = str(accelerator.device) if world > 1 else resolve_device(cfg)
    out = run_dir(cfg) / "ppo"
    out.mkdir(parents=True, exist_ok=True)
    resume_from = find_resume_checkpoint(cfg, resume)
    if resume_from is None and latest_checkpoint(out / "checkpoints") is not None:
        raise CheckpointError(
            f"{out / 'checkpoints'} already has checkpoints of a PPO run; a fresh run would mix with them.",
            hint="Continue it with --resume auto, or start a new run with another run.name (or delete the folder).",
        )
    changes = check_resume_config(resume_from, cfg) if resume_from is not None else []
    torch.manual_seed(cfg.run.seed)
    policy = build_policy(cfg, device, resume_from, accelerator)
    if cfg.env.history:  # K earlier frames and answers must fit the model's context
        from vlmppo.models.budget import config_prompt_budget

        config_prompt_budget(cfg, ppo.max_new_tokens, policy.loaded).check(
            cfg.model.path, "ppo.max_new_tokens"
        )
    optimizer = make_optimizer(policy, cfg)
    total_updates = ppo_counts(cfg, world)["updates"]
    run = PpoRun(
        cfg, out, device, accelerator, policy, optimizer,
        # The value head's group keeps its ratio to the policy LR as both follow the cosine.
        make_cosine_scheduler(optimizer, total_updates, ppo.lr, ppo.min_lr, proportional_groups=True),
        np.random.default_rng(cfg.run.seed if rank == 0 else [cfg.run.seed, rank]),
        BadMinibatchGuard(ppo.max_bad_minibatches), total_updates,
        recent_episodes=deque(maxlen=max(cfg.env.n_envs, 10)), checkpoint=resume_from, resume_changes=changes,
        world=world, rank=rank,
    )  # fmt: skip
    if world > 1:
        wrap_for_data_parallel(run)
    if resume_from is not None:
        restore_run(run, resume_from)
    else:
        start_envs(run)
    if torch.cuda.is_available() and device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    return run


def launched_world() -> int:
    """Processes the launcher started (torchrun / ``accelerate launch`` set ``WORLD_SIZE``); 1 without one."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def ppo_accelerator(cfg: Config) -> Accelerator:
    """The run's Accelerator: bf16 autocast on a GPU; under a launcher the process group (gloo on CPU ranks,
    NCCL on GPUs) and, for ``ppo.launch=zero2``, the DeepSpeed plugin (accumulation over the micro-batches
    of a minibatch, clipping at ``ppo.max_grad_norm``)."""
    from vlmppo.accel import make_accelerator, precision_for
    from vlmppo.sft.launching import deepspeed_plugin

    ppo = cfg.ppo
    device = resolve_device(cfg)
    precision = precision_for(ppo.mixed_precision, device)
    plugin = None
    if launched_world() > 1:
        plugin = deepspeed_plugin(
            ppo.launch,
            grad_accum=ppo.minibatch_size // ppo.micro_batch_size,
            max_grad_norm=ppo.max_grad_norm,
            batch_size=ppo.micro_batch_size,
        )
    if plugin is not None:
        # DeepSpeed's bf16 mode would cast every trained weight, the value head included, to bf16; the design
        # keeps the value head and the adapter in fp32 and autocasts the forward passes (``model_autocast``).
        precision = "no"
    return make_accelerator(device, precision, deepspeed_plugin=plugin)


def model_autocast(cfg: Config, accelerator: Accelerator, device: str):
    """The context the model's forward passes run in: the Accelerator's autocast, or under DeepSpeed (whose
    Accelerator has no mixed precision, ``ppo_accelerator``) torch's own bf16 autocast on a GPU."""
    from vlmppo.accel import precision_for

    if accelerator.state.deepspeed_plugin is None or precision_for(cfg.ppo.mixed_precision, device) != "bf16":
        return accelerator.autocast
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


def wrap_for_data_parallel(run: PpoRun) -> None:
    """Wrap the trained parts in DDP (or the DeepSpeed engine, which then owns the optimizer): the update
    scores through ``run.scorer``, whose backward all-reduces the gradients (``rl/distributed.py``)."""
    from vlmppo.rl.distributed import ScoringModule

    module = ScoringModule(run.policy)
    if run.accelerator.state.deepspeed_plugin is not None:
        run.scorer, run.optimizer = run.accelerator.prepare(module, run.optimizer)
    else:
        run.scorer = run.accelerator.prepare_model(module)


def start_envs(run: PpoRun) -> None:
    """A fresh run: a fresh sample log, this rank's vector env of ``cfg.env`` (grouped resets for GRPO/GiGPO),
    its first observations (rank r's envs seeded after rank r-1's: ``rl.distributed.env_seed``) and, with
    ``env.history``, empty windows of earlier turns."""
    from vlmppo.envs import make_vec_env_from_config
    from vlmppo.rl.distributed import env_seed
    from vlmppo.rl.history import HistoryWindows

    if run.rank == 0:
        (run.out / "samples.jsonl").unlink(missing_ok=True)
    env = run.cfg.env
    grouped = run.cfg.ppo.group_size if run.cfg.ppo.advantage != "gae" else None
    seed = env_seed(run.cfg.run.seed, run.rank, env.n_envs)
    run.vec = make_vec_env_from_config(env, env.n_envs, seed, grouped)
    run.obs, run.infos = run.vec.reset()
    run.history = HistoryWindows(env.n_envs, env.history) if env.history else None
    if run.rank > 0:  # its own sampling stream (the model was built from the shared seed above)
        torch.manual_seed(run.cfg.run.seed + 7919 * run.rank)


def check_kl_reference(cfg: Config) -> None:
    """ConfigError for a KL penalty without LoRA: there would be no frozen reference to compare with."""
    if cfg.ppo.kl_coef and cfg.model.lora is None:
        raise ConfigError(
            "ppo.kl_coef > 0 needs a LoRA model: the KL reference is the starting adapter (or the model with "
            "the adapter disabled), and full fine-tuning keeps no frozen copy of the starting model.",
            hint="Set model.lora (e.g. model.lora.r=64) or ppo.kl_coef=0.",
        )


def check_lora_layout(path: Path, cfg: Config) -> None:
    """A resumed adapter must have the layout the config asks for (else the run silently changes)."""
    adapter = json.loads((path / "adapter_config.json").read_text())
    want = cfg.model.lora
    if want is None:
        raise CheckpointError(
            f"{path} is a LoRA adapter, but model.lora is null (full fine-tuning).",
            hint="Resume with the LoRA settings the run started with.",
        )
    if (adapter.get("r"), adapter.get("lora_alpha")) != (want.r, want.alpha):
        raise CheckpointError(
            f"{path} has LoRA r={adapter.get('r')} alpha={adapter.get('lora_alpha')}, but the config asks for "
            f"model.lora.r={want.r} alpha={want.alpha}.",
            hint="Resume with the LoRA settings the run started with, or start a new run (another run.name).",
        )


def build_policy(
    cfg: Config, device: str, resume_from: Path | None = None, accelerator: Accelerator | None = None
) -> ActorCritic:
    """The actor-critic: base model + LoRA (fresh, from ``ppo.init_from``, or from a checkpoint being
    resumed) + value head (fresh, or the checkpoint's when resuming). With an ``accelerator``, its
    autocast (bf16 mixed precision) wraps the model's forward passes."""
    from vlmppo.checkpoints import base_model_for, check_family, resolve_checkpoint
    from vlmppo.models import load_model
    from vlmppo.models.generation import resolve_decoder

    source = resume_from
    if source is None and cfg.ppo.init_from:
        source = resolve_checkpoint(
            run_dir(cfg), cfg.ppo.init_from, key="ppo.init_from", choices=INIT_CHOICES
        )
    if source is None:
        loaded = load_model(cfg.model, device=device, for_training=True)
    elif (source / "adapter_config.json").is_file():
        from peft import PeftModel

        meta = check_family(source, cfg.model.family)
        if resume_from is not None:
            check_lora_layout(source, cfg)
        base = cfg.model.model_copy(update={"path": base_model_for(source, meta, cfg.model), "lora": None})
        loaded = load_model(base, device=device, for_training=False)
        loaded.model = PeftModel.from_pretrained(loaded.model, str(source), is_trainable=True)
        if cfg.model.gradient_checkpointing:  # load_model only turns it on for a model it trains
            loaded.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:  # a full model folder: train it as configured (fully, or with a fresh LoRA on top)
        check_family(source, cfg.model.family)
        loaded = load_model(
            cfg.model.model_copy(update={"path": str(source)}), device=device, for_training=True
        )
    if cfg.ppo.kl_coef and (reference := reference_adapter(cfg, resume_from)) is not None:
        # The KL anchor: the adapter PPO started from, frozen (ActorCritic.reference_logprobs says why).
        loaded.model.load_adapter(str(reference), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    disable_dropout(loaded.model)
    if str(device).startswith("cuda"):  # processed frames kept on the GPU: no host copy of them per step
        loaded.frame_device = device
    head = ValueHead(hidden_size(loaded.model)) if cfg.ppo.advantage == "gae" else None  # GRPO/GiGPO: none
    if resume_from is not None and head is not None:
        from safetensors.torch import load_file

        head.load_state_dict(load_file(str(resume_from / "value_head.safetensors")))
    return ActorCritic(
        loaded,
        head,
        device,
        merged_sampling=uses_merged_sampling(cfg, device),
        autocast=model_autocast(cfg, accelerator, device)
        if accelerator is not None
        else contextlib.nullcontext,
        decoder=resolve_decoder(cfg.model.decoder, device),
        value_detach=cfg.ppo.value_detach,
    )


def reference_adapter(cfg: Config, resume_from: Path | None) -> Path | None:
    """The folder of the KL reference adapter: the resumed checkpoint's ``reference/`` (peft saves it with
    every checkpoint), else the ``ppo.init_from`` adapter; None when PPO started from a fresh LoRA (or a
    full model folder), whose reference is the model with the adapter disabled."""
    from vlmppo.checkpoints import resolve_checkpoint

    if resume_from is not None and (resume_from / REFERENCE_ADAPTER / "adapter_config.json").is_file():
        return resume_from / REFERENCE_ADAPTER
    if cfg.ppo.init_from:
        start = resolve_checkpoint(run_dir(cfg), cfg.ppo.init_from)
        if (start / "adapter_config.json").is_file():
            return start
    return None


def disable_dropout(model) -> None:
    """PPO trains without dropout (as TRL does): the update's first forward then scores exactly what the
    rollout scored, so the ratio starts at 1 and clipping measures the policy's change, not dropout noise.
    Train mode stays on for the update (gradient checkpointing only runs in train mode)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def uses_merged_sampling(cfg: Config, device: str) -> bool:
    """``ppo.merged_sampling``: auto means on a GPU (where decoding is launch-bound), off on the CPU. Never for a
    quantised base (``model.quantization``): its weights can't take the adapter, so it samples unmerged."""
    mode = cfg.ppo.merged_sampling
    if cfg.model.lora is None or cfg.model.quantization:
        return False
    return mode is True or (mode == "auto" and device.startswith("cuda"))


def make_optimizer(policy: ActorCritic, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over the trainable LoRA weights and the value head (at ``ppo.value_head_lr`` if set), if any."""
    ppo = cfg.ppo
    lora = [param for param in policy.loaded.model.parameters() if param.requires_grad]
    groups = [{"params": lora, "lr": ppo.lr}]
    if policy.value_head is not None:
        groups.append({"params": list(policy.value_head.parameters()), "lr": ppo.value_head_lr or ppo.lr})
    return torch.optim.AdamW(groups, lr=ppo.lr, eps=ppo.adam_eps, weight_decay=ppo.weight_decay)
