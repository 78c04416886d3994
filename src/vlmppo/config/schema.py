"""The typed config: one section per stage, strict (unknown keys are errors), a help text per field.

Derived quantities (number of updates, optimizer steps, per-rank batch sizes) are properties or are
computed in the plan printed by ``--dry-run``; they are never config fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlmppo.config.checks import cross_section_problems, run_name_problem
from vlmppo.registry import FAMILIES

Family = Literal[FAMILIES]  # type: ignore[valid-type]  (the names of vlmppo.registry)
# How eval and the hf labeller decode (models/generation.py); PPO always samples with explicit settings.
Generation = Literal["explicit", "checkpoint"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field(
        "default",
        description="Run name: outputs go to <output_dir>/<name>/. One folder name: letters, digits, _ . - + = @.",
    )
    output_dir: str = Field("runs", description="Folder that holds one sub-folder per run.")
    seed: int = Field(0, description="Global seed (envs get seed + i, torch and numpy get seed).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = cuda when available, else cpu."
    )

    @field_validator("name")
    @classmethod
    def _one_folder_name(cls, value: str) -> str:
        problem = run_name_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class EnvConfig(Section):
    id: str = Field(
        "gym_cards/NumberLine-v0",
        description="Env id: gym_cards/*, probe/*, MiniGrid-*, a task plugin's id (an installed package's "
        "vlmppo.tasks entry point), module:Name (an env class, a vlmppo.envs.Task, or a gymnasium id that "
        "importing the module registers), or any gymnasium id. See docs/custom-envs.md.",
    )
    adapter: str | None = Field(
        None,
        description="Task plugins only: module:Class of the TaskAdapter (prompt, legal actions, frame, expert, "
        "reward shaping); null: the plugin's own, else the default adapter for named Discrete actions.",
    )
    adapter_kwargs: dict = Field(
        default_factory=dict,
        description="Task plugins only: keyword arguments of the adapter (the default adapter takes "
        "actions: [names] and task: text).",
    )
    n_envs: int = Field(4, ge=1, description="Environments stepped together (one batched generate for all).")
    max_episode_steps: int | None = Field(
        None, ge=1, description="Time limit per episode; null keeps the env's own default."
    )
    kwargs: dict = Field(
        default_factory=dict, description="Extra keyword arguments passed to gymnasium.make."
    )
    observation: Literal["full", "agent_view"] = Field(
        "full", description="MiniGrid only: the full top-down render or the agent's partial view."
    )
    tile_size: int = Field(32, ge=4, description="MiniGrid only: pixels per grid tile in the rendered frame.")
    history: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Earlier turns of the episode in each prompt: the last K frames (images) with the model's "
            "answers to them, before the current frame and the task text. 0: the current frame only."
        ),
    )
    prompt: Literal["rl4vlm", "rl4vlm_action_only", "cot", "action_only"] = Field(
        "cot",
        description=(
            "Prompt style (the parser and answer format follow it). rl4vlm: the paper's prompts and JSON "
            'fields, the action found anywhere after "action": (gym_cards only); cot: our prompts, '
            "thoughts then an exact action; *action_only: just the action."
        ),
    )

    @model_validator(mode="after")
    def _prompt_exists(self) -> EnvConfig:
        if self.prompt.startswith("rl4vlm") and not self.id.startswith("gym_cards/"):
            raise ValueError(
                f"env.prompt '{self.prompt}' is RL4VLM's gym-cards prompt and {self.id!r} has none; "
                "use env.prompt=cot or env.prompt=action_only"
            )
        return self


class LoraConfig(Section):
    r: int = Field(128, ge=1, description="LoRA rank.")
    alpha: int = Field(256, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="LoRA dropout in SFT (PPO runs without dropout)."
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names (or regex parts) of the language model to adapt, or 'all-linear'.",
    )
    train_vision_tower: bool = Field(False, description="Also train the vision tower (fully).")
    train_projector: bool = Field(False, description="Also train the vision-to-language projector (fully).")


class ModelConfig(Section):
    family: Family = Field("qwen2-vl", description=f"Model family: one of {', '.join(FAMILIES)}.")
    path: str = Field(
        "tiny:qwen2-vl",
        description="Local folder, hub id, or tiny:<family> / small:<family> for a random model built and cached "
        "locally (tiny: tests on a CPU; small: ~14M parameters, learning from scratch on a GPU).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on GPU, float32 on CPU."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel; flash_attention_2 needs the flash-attn package."
    )
    lora: LoraConfig | None = Field(
        default_factory=LoraConfig, description="LoRA settings; null trains the full model."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in training.")
    min_pixels: int | None = Field(None, ge=1, description="Qwen image processor: minimum pixels per image.")
    max_pixels: int | None = Field(None, ge=1, description="Qwen image processor: maximum pixels per image.")
    trust_remote_code: bool = Field(False, description="Allow model code from the checkpoint folder.")
    decoder: Literal["auto", "static", "static-compiled", "generate"] = Field(
        "auto",
        description="How answers are sampled (PPO rollouts, eval, collect, hf labels): static = a static KV "
        "cache with CUDA-graph decode steps and finished rows dropped early (models/static_decode.py); "
        "static-compiled = the same with the decode forward through torch.compile (a minute to compile); "
        "generate = transformers' generate (the reference); auto = static on a GPU, generate on the CPU.",
    )

    quantization: Literal["4bit", "8bit"] | None = Field(
        None,
        description="Load the frozen base quantised with bitsandbytes (QLoRA; needs a CUDA GPU and the [quant] "
        "extra): 4bit = NF4 with bf16 compute, 8bit = LLM.int8. The language model's linear layers only; the "
        "LoRA adapters, value head, vision tower and output layer stay in bf16/fp32. Needs model.lora.",
    )
    double_quant: bool = Field(
        True, description="4bit: also quantise the quantisation constants (~0.4 bit less per weight)."
    )

    @model_validator(mode="after")
    def _pixels_ordered(self) -> ModelConfig:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")
        if self.quantization and self.lora is None:
            raise ValueError(
                f"quantization={self.quantization} needs LoRA: quantised base weights cannot be trained; set "
                "model.lora (e.g. model.lora.r=64) or model.quantization=null"
            )
        return self


class CollectConfig(Section):
    policy: Literal["expert", "random", "checkpoint"] = Field(
        "expert", description="Who acts: the env's expert, uniform random, or a trained VLM checkpoint."
    )
    ckpt: str | None = Field(None, description="Checkpoint for policy=checkpoint (path, or last|sft|ppo).")
    episodes: int = Field(100, ge=1, description="Episodes to collect.")
    epsilon: float = Field(
        0.0, ge=0.0, le=1.0, description="Expert takes a random action with this probability."
    )
    temperature: float = Field(
        1.0, ge=0.0, description="Sampling temperature for policy=checkpoint (0 = greedy)."
    )
    max_new_tokens: int = Field(256, ge=1, description="Answer length limit for policy=checkpoint.")


class LabelConfig(Section):
    labeller: Literal["expert", "hf", "openai"] = Field("expert", description="Who writes the labels.")
    mode: Literal["action", "score"] = Field(
        "action", description="action: write thoughts + action (SFT target); score: rate a transition 0-10."
    )
    model: str | None = Field(None, description="hf: model path; openai: the served model's name.")
    family: Family | None = Field(None, description="hf labeller's model family (default: model.family).")
    base_url: str = Field("http://localhost:8000/v1", description="openai: the server's base URL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: environment variable that holds the key.")
    max_concurrency: int = Field(8, ge=1, description="openai: requests in flight at once.")
    max_retries: int = Field(
        5, ge=0, description="openai: retries on 429/5xx/timeouts (exponential backoff)."
    )
    timeout_s: float = Field(120.0, gt=0, description="openai: seconds per request.")
    backoff_s: float = Field(1.0, ge=0, description="openai: first retry wait; doubles on each retry.")
    batch_size: int = Field(8, ge=1, description="hf: prompts per generate call.")
    max_new_tokens: int = Field(512, ge=1, description="Answer length limit.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy.")
    generation: Generation = Field(
        "explicit",
        description="hf: explicit = greedy or plain sampling at label.temperature, nothing else; checkpoint = "
        "the labeller model's own generation_config.json (its sampling, top-k/top-p, repetition penalty, "
        "...; label.temperature unused). The manifest records which.",
    )


class PreprocessConfig(Section):
    only_success: bool = Field(
        False, description="Keep only steps of episodes that solved the task (its own goal, not return > 0)."
    )
    min_score: float | None = Field(
        None, description="Keep only transitions scored at least this (score labels)."
    )
    drop_parse_errors: bool = Field(
        True, description="Drop labels the labeller's answer could not be parsed for."
    )
    dedupe: bool = Field(True, description="Drop identical (frame, answer) pairs.")
    balance_actions: bool = Field(
        False, description="Subsample so every action is as frequent as the rarest."
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of episodes held out for validation."
    )
    split_seed: int = Field(0, description="Seed of the episode-level train/val split.")
    action_only: bool = Field(
        False, description="Answers without thoughts (prompts become the env.prompt style's action-only one)."
    )
    on_error: Literal["stop", "skip"] = Field("stop", description="A corrupt input line: stop or skip it.")
    format: Literal["vlmppo", "llamafactory"] = Field(
        "vlmppo",
        description="vlmppo: train/val.jsonl (what `vlmppo sft` and TRL read); llamafactory: also "
        "dataset_info.json + LLaMA-Factory sharegpt files beside them.",
    )


class SftConfig(Section):
    train_file: str | None = Field(None, description="Default: runs/<name>/data/train.jsonl.")
    val_file: str | None = Field(None, description="Default: runs/<name>/data/val.jsonl.")
    epochs: float = Field(
        6, gt=0, description="Passes over the training set (ignored when max_steps is set)."
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs.")
    stop_at_step: int | None = Field(None, ge=1, description="Stop after this optimizer step (saved; --resume auto "
        "continues), the schedule still max_steps'/epochs': a checkpoint mid-schedule (a weak start for RL).")  # fmt: skip
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="Linear warm-up, as a fraction of the steps."
    )
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="Decay after warm-up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    batch_size: int = Field(4, ge=1, description="Samples per device per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    max_length: int = Field(2048, ge=16, description="Token limit per sample (prompt + image + answer).")
    on_too_long: Literal["truncate", "skip"] = Field("truncate", description="Samples over max_length.")
    group_by_length: bool = Field(False, description="Batch samples of similar length together.")
    loader_workers: int | None = Field(
        None,
        ge=0,
        description="Processes that collate the next micro-batches (decode, resize, tokenize) during the step; "
        "null: 0 on a CPU, min(8, cores - 1) on a GPU. The data order does not depend on it.",
    )
    eval_every: int = Field(100, ge=1, description="Optimizer steps between val evaluations.")
    eval_episodes: int | None = Field(None, ge=1, description="Also play this many greedy env episodes per "
        "eval.seeds seed at each eval (eval/success_rate, as vlmppo eval; rank 0; not ZeRO-3); null: none.")  # fmt: skip
    save_every: int = Field(200, ge=1, description="Optimizer steps between checkpoints.")
    keep_last: int | None = Field(
        None,
        ge=1,
        description="Keep only the newest N numbered checkpoints (null keeps all); the newest and any that "
        "ppo.init_from or eval.ckpt name are always kept.",
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many evals w/o gain."
    )
    launch: Literal["single", "ddp", "zero2", "zero3", "zero3-offload"] = Field(
        "single", description="Launch config shipped with the package (DeepSpeed through accelerate)."
    )


class PpoConfig(Section):
    init_from: str | None = Field(
        None, description="'sft' (this run's SFT checkpoint), a checkpoint path, or null."
    )
    n_steps: int = Field(32, ge=1, description="Env steps per env per update (rollout length).")
    total_env_steps: int = Field(15000, ge=1, description="Env steps over the whole run (all envs).")
    n_epochs: int = Field(4, ge=1, description="PPO epochs over each rollout.")
    minibatch_size: int = Field(32, ge=1, description="Samples per optimizer step.")
    micro_batch_size: int = Field(
        4, ge=1, description="Samples per forward/backward (gradient accumulation)."
    )
    lr: float = Field(1e-5, gt=0, description="Initial learning rate (cosine to min_lr over the run).")
    min_lr: float = Field(1e-9, ge=0, description="Final learning rate.")
    adam_eps: float = Field(1e-7, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(
        0.0,
        ge=0.0,
        description="AdamW's decoupled weight decay of the LoRA weights and the value head: 0 = plain Adam, as "
        "RL4VLM (torch's AdamW default would be 0.01).",
    )
    gamma: float = Field(0.9, ge=0.0, le=1.0, description="Discount factor.")
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda.")
    clip_range: float = Field(0.1, gt=0, description="PPO ratio clip.")
    clip_range_vf: float | None = Field(0.1, gt=0, description="Value clip around the old value; null = off.")
    vf_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    ent_coef: float = Field(0.0, ge=0, description="Entropy bonus on the action tokens.")
    kl_coef: float = Field(
        0.0,
        ge=0,
        description="KL penalty to the policy PPO started from: the ppo.init_from adapter (a frozen copy), else "
        "the model with the adapter disabled. Needs LoRA.",
    )
    target_kl: float | None = Field(
        None, gt=0, description="Stop the epochs early when approx KL exceeds this."
    )
    max_grad_norm: float = Field(0.01, gt=0, description="Gradient clipping (RL4VLM used 0.01).")
    thought_coef: float = Field(
        0.5, ge=0.0, le=1.0, description="lambda: weight of thought tokens in log pi(a|s)."
    )
    action_key_coef: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description='Weight of the "action": key tokens (between the thoughts and the action value) in '
        "log pi(a|s): 1 counts them with the action, as RL4VLM; set it to thought_coef to count them as thoughts.",
    )
    temperature: float = Field(
        0.2, gt=0, description="Sampling temperature (the same divides the scoring logits)."
    )
    max_new_tokens: int = Field(256, ge=1, description="Answer length limit.")
    merged_sampling: Literal["auto", True, False] = Field(
        "auto",
        description="Sample from a merged copy of the LoRA model (about 2x decode speed on a GPU, one more copy "
        "of the weights): true, false, or auto = true when the device is a GPU and the base is not quantised "
        "(a quantised base samples from the adapter model: its weights cannot be merged).",
    )
    mixed_precision: Literal["auto", "bf16", "no"] = Field(
        "auto",
        description="bf16 autocast of the model's forward passes (sampling, scoring, update): auto = bf16 on "
        "a GPU, none on the CPU. The value head and all log-probs stay in fp32.",
    )
    invalid_action_penalty: float = Field(
        0.0, le=0.0, description="Added to the reward when no action parses."
    )
    save_every: int = Field(10, ge=1, description="Updates between checkpoints.")
    keep_last: int | None = Field(
        None,
        ge=1,
        description="Keep only the newest N numbered checkpoints (null keeps all); the newest and any that "
        "ppo.init_from or eval.ckpt name are always kept.",
    )
    log_samples_every: int = Field(5, ge=1, description="Updates between sample answers written to disk.")
    max_bad_minibatches: int = Field(
        3, ge=1, description="Abort after this many NaN/inf minibatches in a row."
    )
    value_head_lr: float | None = Field(
        None, gt=0, description="Separate LR for the value head (default: lr)."
    )
    value_warmup_updates: int = Field(
        0,
        ge=0,
        description="gae: the first N updates train the value head alone (no policy loss, no gradient into the "
        "model), so GAE's advantages come from a critic that predicts something before the policy moves; for "
        "a fresh value head on a trained policy (docs/learning.md says when). Single process only.",
    )
    value_detach: bool = Field(
        False,
        description="gae: the value head reads detached features, so the value loss trains the head only and "
        "never moves the shared model (the policy's features); for a fully fine-tuned model, where Adam would "
        "move every weight by ~lr for the value loss too.",
    )
    eval_every: int | None = Field(
        None,
        ge=0,
        description="Updates between greedy evals of the current policy during PPO (eval's episode loop on "
        "eval.seeds; also before the first update and after the last; eval/* in the update's row); null/0 = off.",
    )
    eval_episodes: int = Field(50, ge=1, description="Episodes per eval seed of each greedy eval during PPO.")
    advantage: Literal["gae", "grpo", "gigpo"] = Field(
        "gae",
        description="gae: a value head and GAE (RL4VLM); grpo: no critic, an episode's return minus its group's "
        "mean (envs of a group share reset seeds); gigpo: grpo plus a step-level term over the group's "
        "repeated observations (Feng et al. 2025). docs/advantages.md says when each fits.",
    )
    group_size: int = Field(
        8,
        ge=1,
        description="grpo/gigpo: envs per group, which start each round from one seed (divides env.n_envs).",
    )
    group_norm: Literal["std", "mean"] = Field(
        "std", description="grpo/gigpo: divide by the group's std (std) or only subtract its mean (mean)."
    )
    step_weight: float = Field(
        1.0, ge=0.0, description="gigpo: omega, the weight of the step-level advantage beside the episode's."
    )
    launch: Literal["single", "ddp", "zero2", "zero3"] = Field(
        "single",
        description="How many processes run PPO and how they share the update: single (one process), ddp "
        "(data parallel: each GPU its own n_envs, gradients averaged), zero2 (DeepSpeed ZeRO-2: optimizer "
        "state and gradients sharded). zero3 is refused: sampling needs every rank's whole weights. Start "
        "it with --launch/--gpus, which prints the launcher command.",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no_is_false(cls, value):
        # YAML reads a bare `no` (ppo.mixed_precision=no on the command line) as the boolean false.
        return "no" if value is False else value


class EvalConfig(Section):
    ckpt: str | None = Field(None, description="Checkpoint to evaluate: a path or last|sft|ppo.")
    episodes: int = Field(20, ge=1, description="Episodes per seed.")
    seeds: list[int] = Field(
        default_factory=lambda: [1000], description="Seeds; each gives its own episodes."
    )
    greedy: bool = Field(True, description="Greedy decoding (else sample at temperature).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature when greedy is false.")
    max_new_tokens: int = Field(256, ge=1, description="Answer length limit.")
    trajectories: int = Field(3, ge=0, description="Episodes drawn as captioned strips and GIFs.")
    generation: Generation = Field(
        "explicit",
        description="explicit = greedy (or plain sampling at eval.temperature), nothing else; checkpoint = the "
        "checkpoint's own generation_config.json (its sampling, top-k/top-p, repetition penalty, ...; "
        "eval.greedy and eval.temperature unused). metrics.json and the report say which.",
    )


class SlurmConfig(Section):
    partition: str | None = Field(None, description="#SBATCH --partition (null: the cluster default).")
    account: str | None = Field(None, description="#SBATCH --account.")
    qos: str | None = Field(None, description="#SBATCH --qos.")
    nodes: int = Field(1, ge=1, description="Nodes per job.")
    gpus_per_node: int = Field(1, ge=0, description="GPUs per node (one process per GPU).")
    max_gpus_per_node: int = Field(
        8, ge=1, description="What the cluster's nodes have; a larger request is an error."
    )
    cpus_per_task: int = Field(8, ge=1, description="#SBATCH --cpus-per-task.")
    mem: str | None = Field("64G", description="#SBATCH --mem (null: the cluster default).")
    time: str = Field("24:00:00", description="#SBATCH --time (D-HH:MM:SS or HH:MM:SS).")
    setup: list[str] = Field(
        default_factory=list,
        description="Shell lines run before the launch (module load, source venv/bin/activate).",
    )
    template: str | None = Field(None, description="Your own sbatch template (default: the shipped one).")
    python: str | None = Field(
        None,
        description="Python the job runs vlmppo with (null: the interpreter that renders the script).",
    )
    requeue: bool = Field(True, description="#SBATCH --requeue: SLURM may requeue a preempted job.")
    signal_grace_s: int = Field(
        120, ge=10, description="USR1 this many seconds before the time limit: save and exit."
    )
    launcher: Literal["accelerate", "torchrun"] = Field(
        "accelerate", description="Per-node process launcher."
    )
    cpu_processes: int = Field(
        0,
        ge=0,
        description="With slurm.gpus_per_node=0: start this many CPU processes (gloo) per node for a training "
        "stage, through torchrun (a laptop-sized try of a multi-process job; 0 = one plain process).",
    )
    extra_sbatch: list[str] = Field(
        default_factory=list, description="More #SBATCH options, e.g. '--constraint=h100'."
    )


class TrackingConfig(Section):
    tensorboard: bool = Field(False, description="Also write TensorBoard event files.")
    wandb: bool = Field(False, description="Also log to Weights & Biases (offline when no API key is set).")
    wandb_project: str = Field("vlmppo", description="W&B project.")
    log_every: int = Field(
        1, ge=1, description="SFT optimizer steps between metric lines (PPO logs every update)."
    )


class Config(Section):
    """A whole run's configuration: every stage's section."""

    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    sft: SftConfig = Field(default_factory=SftConfig)
    ppo: PpoConfig = Field(default_factory=PpoConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        problems = cross_section_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self
