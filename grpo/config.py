"""Run configuration: typed dataclasses, loaded from YAML with dotted `key=value` overrides.

Precedence, lowest to highest: the dataclass defaults, the YAML file, the command-line overrides.
OmegaConf's structured configs reject unknown keys and wrong types; `validate` checks ranges and
choices. Every error names the key path and where the value came from, and is raised before any
model, data or engine is touched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sandboxes import Limits

# Pipeline order. dpo and kto may both run (dpo first, kto from its model), or either alone.
STAGES = ("sft", "dpo", "kto", "grpo")


class ConfigError(ValueError):
    """A config problem, with the key path and the source (file or command line) in the message."""


@dataclass
class LoraConfig:
    """Low-rank adapters (peft) trained in every stage instead of the full weights (README: LoRA)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # "all-linear" (every linear layer but the output head) or module names, e.g. [q_proj, v_proj].
    target_modules: Any = "all-linear"
    # Modules trained in full and saved with the adapter (e.g. [embed_tokens, lm_head] after adding tokens).
    modules_to_save: List[str] = field(default_factory=list)
    # Each stage writes its adapter (peft format) to <stage>/final/adapter; save_merged also writes the merged
    # Hugging Face model to <stage>/final (false: <stage>/final holds the adapter alone, merged when loaded).
    save_merged: bool = True
    # What the next stage of `grpo run` trains: "merged" (a fresh adapter on the merged model; DPO and GRPO then
    # take their reference from the same model with the adapter disabled) or "adapter" (keeps training this one).
    next_stage: str = "merged"
    # How GRPO's rollout engine gets the new policy: "adapter" (vLLM LoRA: only the adapter moves), "merged"
    # (base + adapter through the full-weight push) or "auto" (see grpo.runtime.lora.resolve_push).
    push: str = "auto"


@dataclass
class ModelConfig:
    # "tiny" or "tiny:<preset>" builds the embedded model locally; anything else is a local path or hub id.
    name_or_path: str = "tiny"
    # Where the embedded model is built (reused when it already exists with the same preset).
    tiny_dir: str = "artifacts/tiny_model"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False
    lora: Optional[LoraConfig] = None  # set (e.g. `model.lora: {rank: 16}`) to train adapters, not full weights


@dataclass
class ArithmeticConfig:
    """The generated arithmetic task used when `data.source == "arithmetic"`."""

    max_digits: int = 3
    ops: List[str] = field(default_factory=lambda: ["+", "-", "*"])
    # Sizes of the disjoint pools: SFT demonstrations, RL prompts (DPO and GRPO), held-out eval.
    n_sft: int = 10000
    n_rl: int = 5000
    n_eval: int = 500
    # How SFT demonstrations are worked: "columns" (digit by digit, with carries) or "direct" (the boxed
    # answer alone). See grpo/tasks/arithmetic.py.
    solution_style: str = "columns"


@dataclass
class ToolArithmeticConfig:
    """The generated task of `data.source: tool_arithmetic` (configs/tiny_tool_arith.yaml): hard problems (three-digit
    by three-digit products, sums of four four-digit numbers) that demonstrations solve with the python tool, mixed
    with the embedded default's easy ones, worked in columns. Held-out problems are hard ones only."""

    n_sft: int = 10000
    n_rl: int = 20000
    n_eval: int = 500
    hard_share: float = 0.5  # share of hard problems in the SFT and RL pools
    hard_kinds: List[str] = field(default_factory=lambda: ["product3", "sum4"])


@dataclass
class DataConfig:
    # "arithmetic" (generated locally), a local file/dir (jsonl, json, parquet, csv, save_to_disk dir) or a hub id.
    source: str = "arithmetic"
    subset: Optional[str] = None  # the dataset's config name on the hub (e.g. "main" for openai/gsm8k)
    split: str = "train"
    # Optional separate eval source; otherwise `eval_size` rows are split off deterministically.
    eval_source: Optional[str] = None
    eval_split: str = "test"
    eval_size: int = 500
    # Column mapping: which dataset columns hold the prompt, the reference answer, the SFT demonstration.
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    solution_field: str = "solution"
    # Rename columns on load, {existing: new}, e.g. {input_output: tests} for APPS-style code data.
    column_map: Dict[str, str] = field(default_factory=dict)
    # When set, the reference answer is this regex's first group in the answer field, e.g. "####\\s*(.+)$"
    # for GSM8K, whose answer column holds the worked solution.
    answer_regex: Optional[str] = None
    # Extra columns a verifier needs (e.g. ["tests"] for the code verifier); all columns are passed anyway,
    # listing them here makes a missing one an error at load time instead of a zero reward later.
    required_fields: List[str] = field(default_factory=list)
    prompt_template: str = "{prompt}"
    system_prompt: Optional[str] = None
    apply_chat_template: bool = True
    max_prompt_tokens: int = 512
    limit: Optional[int] = None  # use only the first N training rows (quick experiments)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    tool_arithmetic: ToolArithmeticConfig = field(default_factory=ToolArithmeticConfig)


@dataclass
class VerifierSpec:
    name: str = MISSING  # "math", "code", "format", a registered plug-in, or "package.module:attr"
    weight: float = 1.0
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyConfig:
    workers: int = 2  # worker processes for batch scoring; 0 scores inline
    timeout_s: float = 30.0  # hard per-item limit; a stuck item scores 0 (code items may take ~20 s)
    sandbox: Limits = field(default_factory=Limits)


@dataclass
class RolloutConfig:
    backend: str = "vllm"  # vllm | hf (transformers generate: no vLLM needed, slower)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256
    # vLLM engine. On the CPU, gpu_memory_utilization is the fraction of host memory for the KV cache.
    gpu_memory_utilization: float = 0.2
    # Fixed KV-cache size in GiB (overrides gpu_memory_utilization for the cache). Recommended on the
    # CPU, where vLLM sizes the cache as utilization x host memory minus this process's RSS, which the
    # trainer sharing the process keeps growing.
    kv_cache_gb: Optional[float] = None
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False  # GPU only: release KV cache and weights during the update
    enforce_eager: bool = True
    max_model_len: Optional[int] = None
    seed: int = 0
    # colocated: every training rank owns a vLLM engine and alternates generate -> update (the default: on one
    # machine's shared cores it is the faster mode, README "Asynchronous rollouts"). async: the last
    # `inference_ranks` processes of the launch own the engines and the verifiers and generate the next batch while
    # the other ranks train on this one (grpo.runtime.inference).
    mode: str = "colocated"
    inference_ranks: int = 1  # async: processes (GPUs) of the launch that generate; the rest train
    # async: batch b is generated by the policy of step max(0, b - max_staleness), exactly (a fixed pattern, so runs
    # and resumed runs reproduce). 0: on-policy, the same samples as colocated mode.
    max_staleness: int = 1
    # async: seconds a trainer waits for a batch (or an inference rank for its next command) before the run ends
    # with a message naming the rank; a rank that stops its heartbeat is named within ~10 s whatever this is.
    async_timeout_s: float = 1800.0
    weight_bucket_mb: int = 256  # async: weights cross to the inference ranks in broadcasts of this size


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | linear
    max_grad_norm: float = 1.0


@dataclass
class EngineConfig:
    zero_stage: int = 0  # 0-3; ZeRO-3 gathers partitions for the weight push
    precision: str = "fp32"  # fp32 | bf16 (GPU)
    dist_backend: str = "auto"  # auto: nccl with CUDA, gloo otherwise
    offload_optimizer: bool = False
    # ZeRO-3: parameters with fewer elements than this stay whole on every rank (DeepSpeed's
    # stage3_param_persistence_threshold; None keeps its default, 1e5). 0 partitions every parameter.
    zero3_persistence_threshold: Optional[int] = None
    # Seconds any collective may wait for the other ranks before it fails (a dead or hung rank then ends the run
    # instead of hanging it forever). Must exceed the longest time one rank legitimately waits for another.
    collective_timeout_s: float = 600.0


@dataclass
class GRPOConfig:
    steps: int = 100
    prompts_per_step: int = 16  # per rank; each gives group_size completions
    group_size: int = 8
    micro_batch_size: int = 16  # completions per forward/backward; gradient accumulation covers the rest
    # Largest share of padding in one forward pass: a micro-batch sorted by length is split into passes
    # that stay under it (one truncated answer no longer pads all the others). 1.0: one pass per micro-batch.
    # Used only for padded rows (share_prompt off or flash attention), and not with ZeRO-3 on several ranks,
    # which needs the same number of passes on every rank.
    max_padding: float = 0.25
    # Run each group's prompt once, its completions after it under a tree attention mask (grpo.algorithms.packing):
    # the prompt's tokens go through the model once per group instead of once per completion, where a cost
    # model says that is cheaper than the extra masked attention (long answers after a short prompt keep
    # their own rows). Needs SDPA or eager attention (flash-attention models fall back to padded rows, said
    # at start). No row is longer than shared_row_tokens (the mask is [L, L] per row).
    share_prompt: bool = True
    shared_row_tokens: int = 4096
    num_iterations: int = 1  # updates per rollout batch (>1 keeps old-policy logprobs)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # Advantages
    advantage: str = "grpo"  # grpo | dr_grpo | rloo
    scale: str = "group"  # group | batch | none (std normalisation, grpo only)
    # Policy loss
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    ratio_level: str = "token"  # token | sequence (GSPO)
    aggregation: str = "token_mean"  # seq_mean (GRPO) | token_mean (DAPO) | constant (Dr. GRPO)
    constant_normalizer: Optional[float] = None  # for aggregation=constant; default max_tokens
    beta: float = 0.0  # KL(k3) to the reference; 0 loads no reference model
    tis_level: str = "none"  # none | token | sequence: truncated importance sampling vs sampler logprobs
    tis_cap: float = 2.0
    overlong_filter: bool = False  # mask truncated completions out of the loss
    overlong_buffer: int = 0  # soft overlong punishment: buffer length in tokens (0 = off)
    overlong_penalty: float = 1.0
    # DAPO dynamic sampling: drop groups with equal rewards, sample more until the batch is full.
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    eval_every: int = 0  # 0: only at the end
    save_every: int = 50
    # After each weight push, compare the engine's logprobs of one completion with the trainer's
    # forward pass and log the largest difference (sync/max_logprob_diff): a cheap end-to-end check.
    check_weight_sync: bool = False
    # ...and stop the run when that difference exceeds this (a stale engine, or one sampling from the base model
    # instead of base + LoRA adapter). None: 1e-3 for float32 weights and training; not enforced in bf16, where
    # vLLM's and the trainer's kernels round differently.
    sync_tolerance: Optional[float] = None


@dataclass
class SFTConfig:
    epochs: int = 10
    max_steps: Optional[int] = None
    tokens_per_batch: int = 8192  # packed tokens per optimizer step (per rank)
    max_seq_len: int = 512
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50, schedule="cosine"))
    micro_batch_size: Optional[int] = None  # packed rows per forward pass (default 8)
    eval_size: Optional[int] = None  # held-out demonstrations for the eval loss (default 5%, at most 500)
    eval_every: int = 100
    patience: int = 3  # evals without improvement before stopping early; 0 disables early stopping
    min_delta: float = 0.0  # an eval loss must improve by more than this to count
    save_every: int = 200


@dataclass
class DPOConfig:
    pairs: str = "verifier"  # verifier (sampled on-policy and labelled) | file
    pairs_file: Optional[str] = None  # jsonl: prompt/chosen/rejected, messages, or hosted-API preference format
    pairs_eval_size: int = 64  # held-out pairs for margin/accuracy
    samples_per_prompt: int = 8  # for pairs=verifier
    num_prompts: int = 1000  # for pairs=verifier
    chosen_rule: str = "shortest"  # shortest | random
    rejected_rule: str = "most_frequent"  # most_frequent | random | longest
    loss_type: str = "sigmoid"  # sigmoid | ipo | robust | hinge | simpo
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    length_normalize: bool = False
    rpo_alpha: float = 0.0
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (default: epochs over the pairs)
    batch_size: int = 16  # pairs per optimizer step (per rank)
    micro_batch_size: Optional[int] = None  # pairs per forward pass (default 8)
    max_seq_len: int = 512
    # Run each pair's prompt once for both answers, under a tree attention mask (grpo.algorithms.packing); needs SDPA or
    # eager attention (flash-attention models fall back to padded rows, said at start).
    share_prompt: bool = True
    # Reference logprobs computed once before training (and cached by a content key), so no
    # reference model is in memory while training; false keeps a live frozen reference.
    precompute_reference: bool = True
    reference_cache_dir: Optional[str] = None  # default: beside the pairs file / in the run dir
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, warmup_steps=10))
    eval_every: int = 0  # held-out pair margin/accuracy every N steps (0: only at the end)
    save_every: int = 200


@dataclass
class KTOConfig:
    """KTO (Ethayarajh et al. 2024) on single answers labelled desirable / undesirable."""

    data: str = "verifier"  # verifier (sampled on-policy, every answer labelled by the verifiers) | file
    # jsonl/json rows {"prompt", "completion", "label": true|false} (text or messages), or {"messages", "label"}
    data_file: Optional[str] = None
    eval_size: int = 64  # held-out examples for loss / implicit rewards (at most a fifth of the data)
    samples_per_prompt: int = 8  # for data=verifier: answers sampled per prompt, all of them kept
    num_prompts: int = 1000  # for data=verifier
    # A correct answer cut off by rollout.max_tokens: undesirable (it never ended) | desirable (the verifier's word)
    truncated_correct: str = "undesirable"
    # none: every example, kto.desirable_weight / undesirable_weight as set | downsample: drop examples of the
    # larger side (seeded) until the sides are equal | weights: keep every example, and set desirable_weight so
    # that desirable_weight * n_desirable = undesirable_weight * n_undesirable (the paper's ratio 1)
    balance: str = "none"
    beta: float = 0.1
    desirable_weight: float = 1.0  # lambda_D
    undesirable_weight: float = 1.0  # lambda_U
    # Weight of an NLL term on the desirable answers (per-token mean, like dpo.rpo_alpha); 0 is plain KTO.
    sft_alpha: float = 0.0
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (default: epochs over the examples)
    # Examples per optimizer step (per rank); the reference point z_ref is estimated over the whole step, all ranks.
    batch_size: int = 32
    micro_batch_size: Optional[int] = None  # examples per forward pass (default 16)
    max_seq_len: int = 512
    # Answers of one prompt in a forward pass share it, under a tree attention mask (grpo.algorithms.packing);
    # flash-attention models fall back to padded rows.
    share_prompt: bool = True
    # Reference logprobs (answers and KL answers) computed once before training and cached by a content key;
    # false keeps a live frozen reference model.
    precompute_reference: bool = True
    reference_cache_dir: Optional[str] = None  # default: beside the data file / in the run dir
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, warmup_steps=10))
    eval_every: int = 0  # held-out loss / rewards every N steps (0: only at the end)
    save_every: int = 200


@dataclass
class ToolsConfig:
    """Tool-integrated rollouts (README: Tool-integrated rollouts): the model calls tools mid-answer; GRPO, SFT
    demonstrations and evaluation run multi-turn episodes. rollout.max_tokens is the episode's token budget
    (model and tool tokens together)."""

    enabled: bool = False
    # code_block: a fenced ```python block, then the model opens ```output and the tool's output follows
    # (Qwen2.5-Math's tool-integrated format) | tool_call: the tokenizer's chat template with the tool definitions;
    # JSON calls in <tool_call> tags, answers rendered as `tool` messages (Hermes / Qwen2.5; chat models with tools)
    format: str = "code_block"
    max_turns: int = 4  # tool calls answered per episode; a further call ends the episode unanswered
    timeout_s: float = 5.0  # per call: sandbox wall clock (python), worker killed (user tools)
    memory_mb: int = 512  # python: address-space limit of the sandboxed interpreter
    max_output_bytes: int = 65536  # python: stdout/stderr beyond this stops the call (status output_limit)
    max_output_chars: int = 512  # what the model reads of any tool's output; the rest is replaced by a note
    workers: int = 2  # sandbox workers (and worker processes per user tool): a turn's calls run in parallel
    # replay: a python call sees the episode's earlier definitions (earlier successful cells run again first, their
    # output hidden) | none: every call starts afresh
    session: str = "replay"
    call_cost: float = 0.0  # subtracted from an episode's reward per tool call (0: calls are free)
    # User tools: name -> "package.module:attr"; str() of the result is the output. code_block: ```name ... ```
    # followed by ```output calls it with the block's body (one string); tool_call: its signature and docstring
    # are the tool's definition, and a call's JSON arguments are passed as keywords.
    functions: Dict[str, str] = field(default_factory=dict)


@dataclass
class GateConfig:
    """An eval gate between the stages of `grpo run`: after each stage, its held-out `metric` is compared with
    the stage before (the base model for the first). A fall of more than `max_drop` fails the gate."""

    metric: Optional[str] = None  # pass@1 | greedy_reward | pass@k / maj@k / mean@k (k = eval.k); None: no gate
    max_drop: float = 0.0  # allowed fall, in the metric's units (0.02 = two points of pass@1)
    # stop: end the run after the failing stage (exit status 3) | fallback: the next stage starts from the model
    # before the failing stage, which becomes the run's final model if no later stage passes
    action: str = "stop"


@dataclass
class EvalConfig:
    num_problems: int = 500
    k: int = 4  # sampled pass@k and maj@k; 0 or 1 for greedy only
    temperature: float = 1.0
    max_tokens: Optional[int] = None  # default rollout.max_tokens
    gate: GateConfig = field(default_factory=GateConfig)


@dataclass
class MetricsConfig:
    tensorboard: bool = True
    wandb_project: Optional[str] = None  # logs to wandb when set and wandb is installed
    progress_bar: bool = True


@dataclass
class DoctorConfig:
    """`grpo doctor` (and `grpo run` with `doctor: true`): how much to look at, and the thresholds."""

    num_prompts: int = 16  # prompts sampled greedily and in groups of grpo.group_size
    num_reference_rows: int = 512  # rows whose reference answer (and demonstration) are scored as completions
    # Share of reference answers / demonstrations that may score below full reward (above: FAIL; up to it: WARN).
    max_bad_reference_share: float = 0.0
    max_truncated_share: float = 0.5  # completions stopped by rollout.max_tokens instead of EOS (above: FAIL)
    max_zero_variance_share: float = 0.8  # groups with equal rewards (above: WARN; all of them: FAIL)
    # Mean |sampler - trainer| logprob per token above which the check fails (None: 1e-3 for fp32, 5e-2 for
    # bf16); the largest single-token difference may be 20x this.
    logprob_tolerance: Optional[float] = None
    # The devices the memory estimate is for. None: this launch's ranks or the GPUs visible here, whichever is
    # more, and their memory; without a GPU: one device per rank, 80 GiB each (stated as an estimate).
    num_gpus: Optional[int] = None
    gpu_memory_gb: Optional[float] = None


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    stages: List[str] = field(default_factory=lambda: ["grpo"])
    resume: str = "auto"  # auto (latest checkpoint in the run dir) | never | a checkpoint path
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    verifiers: List[VerifierSpec] = field(default_factory=lambda: [VerifierSpec(name="math")])
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    doctor: bool = False  # `grpo run` / train / sft / dpo: `grpo doctor`'s checks first; a FAIL stops before training
    doctor_options: DoctorConfig = field(default_factory=DoctorConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------------------------------------
# Loading


def _merge_or_raise(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = (getattr(exc, "msg", None) or str(exc)).strip().splitlines()[0]
        raise ConfigError(f"{source}: key '{key}': {msg}") from None


def load_config(path: str | Path | None = None, overrides: List[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- `key=value` overrides, then `validate`. Returns a RunConfig object."""
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as exc:  # yaml syntax errors carry line numbers in their message
            raise ConfigError(f"{path}: cannot parse YAML: {exc}") from None
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        cfg = _merge_or_raise(cfg, file_cfg, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' must look like key=value")
        try:
            dotlist = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as exc:
            raise ConfigError(f"command line: cannot parse override '{item}': {exc}") from None
        cfg = _merge_or_raise(cfg, dotlist, f"command line override '{item}'")
    source = str(path) if path is not None else "defaults"
    if overrides:
        source += " + command line"
    try:
        obj: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(getattr(exc, "msg", None) or exc).strip().splitlines()[0]
        raise ConfigError(f"{source}: key '{key}': {msg}") from None
    validate(obj, source)
    return obj


def _check(ok: bool, source: str, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{source}: key '{key}': {msg}")


def _one_of(value: Any, choices: tuple, source: str, key: str) -> None:
    _check(value in choices, source, key, f"must be one of {list(choices)}, got {value!r}")


def _validate_optim(o: OptimConfig, source: str, prefix: str) -> None:
    _check(o.lr > 0, source, f"{prefix}.lr", f"must be > 0, got {o.lr}")
    _check(o.weight_decay >= 0, source, f"{prefix}.weight_decay", "must be >= 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), source, f"{prefix}.betas",
           f"must be two numbers in [0, 1), got {list(o.betas)}")
    _check(o.warmup_steps >= 0, source, f"{prefix}.warmup_steps", "must be >= 0")
    _one_of(o.schedule, ("constant", "cosine", "linear"), source, f"{prefix}.schedule")
    _check(o.max_grad_norm >= 0, source, f"{prefix}.max_grad_norm", "must be >= 0 (0 disables clipping)")


def _validate_lora(cfg: RunConfig, source: str) -> None:
    lo = cfg.model.lora
    _check(lo.rank >= 1, source, "model.lora.rank", f"must be >= 1, got {lo.rank}")
    _check(lo.alpha > 0, source, "model.lora.alpha", f"must be > 0, got {lo.alpha}")
    _check(0 <= lo.dropout < 1, source, "model.lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    targets = lo.target_modules
    _check(targets == "all-linear" or (isinstance(targets, (list, tuple)) and len(targets) > 0
                                       and all(isinstance(t, str) and t for t in targets)),
           source, "model.lora.target_modules", f"must be 'all-linear' or a non-empty list of module names, got {targets!r}")
    _one_of(lo.next_stage, ("merged", "adapter"), source, "model.lora.next_stage")
    _one_of(lo.push, ("auto", "adapter", "merged"), source, "model.lora.push")
    if lo.push == "adapter":
        _check(cfg.rollout.backend == "vllm", source, "model.lora.push",
               "'adapter' needs rollout.backend: vllm (the hf backend takes merged weights); use 'auto' or 'merged'")
        _check(not [m for m in lo.modules_to_save if m not in ("embed_tokens", "lm_head")], source,
               "model.lora.push", "'adapter': vLLM's LoRA loads modules_to_save only for embed_tokens and lm_head; "
               "use 'merged' or 'auto'")
        _check(lo.rank <= 512, source, "model.lora.rank", "vLLM's LoRA takes ranks up to 512 ('adapter' push)")


def _validate_tools(cfg: RunConfig, source: str) -> None:
    import re

    t = cfg.tools
    ta = cfg.data.tool_arithmetic
    _check(0 <= ta.hard_share <= 1, source, "data.tool_arithmetic.hard_share", f"must be in [0, 1], got {ta.hard_share}")
    _check(len(ta.hard_kinds) > 0, source, "data.tool_arithmetic.hard_kinds", "must name at least one kind")
    for i, kind in enumerate(ta.hard_kinds):
        _one_of(kind, ("product3", "sum4"), source, f"data.tool_arithmetic.hard_kinds[{i}]")
    for k in ("n_sft", "n_rl", "n_eval"):
        _check(getattr(ta, k) >= 0, source, f"data.tool_arithmetic.{k}", "must be >= 0")
    _one_of(t.format, ("code_block", "tool_call"), source, "tools.format")
    _check(not (t.enabled and t.format == "tool_call") or cfg.data.apply_chat_template, source, "tools.format",
           "tool_call renders prompts with the chat template; set data.apply_chat_template: true")
    _check(t.max_turns >= 1, source, "tools.max_turns", f"must be >= 1, got {t.max_turns}")
    _check(0.01 <= t.timeout_s <= 3600, source, "tools.timeout_s", f"must be in [0.01, 3600] seconds, got {t.timeout_s}")
    _check(t.memory_mb >= 64, source, "tools.memory_mb", f"must be >= 64, got {t.memory_mb}")
    _check(t.max_output_bytes >= 1, source, "tools.max_output_bytes", "must be >= 1")
    _check(t.max_output_chars >= 1, source, "tools.max_output_chars", "must be >= 1")
    _check(t.workers >= 1, source, "tools.workers", f"must be >= 1, got {t.workers}")
    _one_of(t.session, ("replay", "none"), source, "tools.session")
    _check(t.call_cost >= 0, source, "tools.call_cost", f"must be >= 0, got {t.call_cost}")
    for name, spec in t.functions.items():
        _check(re.fullmatch(r"[A-Za-z_][\w.-]*", name) is not None and name != "python", source,
               f"tools.functions.{name}", "the name must be a fence language (letters, digits, _ . -) other than 'python'")
        _check(":" in spec, source, f"tools.functions.{name}", f"expected 'package.module:attr', got {spec!r}")
    if t.enabled:
        for stage in ("dpo", "kto"):
            _check(stage not in cfg.stages, source, "tools.enabled",
                   f"stage {stage} does not train on tool episodes yet; run [sft, grpo] with tools")


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Range and choice checks that types alone cannot express. Raises ConfigError."""
    _check(bool(cfg.name) and "/" not in cfg.name, source, "name", "must be a non-empty name without '/'")
    _check(len(cfg.stages) > 0, source, "stages", f"must list at least one of {list(STAGES)}")
    for i, stage in enumerate(cfg.stages):
        _one_of(stage, STAGES, source, f"stages[{i}]")
    _check(list(cfg.stages) == sorted(cfg.stages, key=STAGES.index) and len(set(cfg.stages)) == len(cfg.stages),
           source, "stages",
           f"must be in pipeline order sft -> dpo -> kto -> grpo without repeats, got {list(cfg.stages)}")
    _check(cfg.resume in ("auto", "never") or Path(cfg.resume).exists(), source, "resume",
           f"must be 'auto', 'never' or an existing checkpoint path, got {cfg.resume!r}")

    _one_of(cfg.model.dtype, ("float32", "bfloat16", "float16"), source, "model.dtype")
    if cfg.model.lora is not None:
        _validate_lora(cfg, source)

    d = cfg.data
    _check(d.eval_size >= 0, source, "data.eval_size", "must be >= 0")
    _check(d.max_prompt_tokens > 0, source, "data.max_prompt_tokens", "must be > 0")
    _check("{prompt}" in d.prompt_template, source, "data.prompt_template", "must contain '{prompt}'")
    _check(d.limit is None or d.limit > 0, source, "data.limit", "must be > 0 when set")
    if d.answer_regex is not None:
        import re

        try:
            groups = re.compile(d.answer_regex).groups
        except re.error as exc:
            raise ConfigError(f"{source}: key 'data.answer_regex': not a valid regular expression: {exc}") from None
        _check(groups >= 1, source, "data.answer_regex", "needs one capture group around the answer")
    a = d.arithmetic
    _check(1 <= a.max_digits <= 9, source, "data.arithmetic.max_digits", "must be in [1, 9]")
    for i, op in enumerate(a.ops):
        _one_of(op, ("+", "-", "*"), source, f"data.arithmetic.ops[{i}]")
    _one_of(a.solution_style, ("columns", "direct"), source, "data.arithmetic.solution_style")
    for k in ("n_sft", "n_rl", "n_eval"):
        _check(getattr(a, k) >= 0, source, f"data.arithmetic.{k}", "must be >= 0")

    _check(len(cfg.verifiers) > 0, source, "verifiers", "must name at least one verifier")
    for i, spec in enumerate(cfg.verifiers):
        _check(bool(spec.name), source, f"verifiers[{i}].name", "must be non-empty")
        _check(spec.weight >= 0, source, f"verifiers[{i}].weight", f"must be >= 0, got {spec.weight}")
    _check(cfg.verify.workers >= 0, source, "verify.workers", "must be >= 0")
    _check(cfg.verify.timeout_s > 0, source, "verify.timeout_s", "must be > 0")

    r = cfg.rollout
    _one_of(r.backend, ("vllm", "hf"), source, "rollout.backend")
    _check(r.temperature >= 0, source, "rollout.temperature", "must be >= 0")
    _check(0 < r.top_p <= 1, source, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _check(r.top_k == -1 or r.top_k > 0, source, "rollout.top_k", "must be -1 (off) or > 0")
    _check(r.max_tokens > 0, source, "rollout.max_tokens", "must be > 0")
    _check(0 < r.gpu_memory_utilization <= 1, source, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    _check(r.kv_cache_gb is None or r.kv_cache_gb > 0, source, "rollout.kv_cache_gb", "must be > 0 when set")
    _check(r.tensor_parallel_size >= 1, source, "rollout.tensor_parallel_size", "must be >= 1")
    _one_of(r.mode, ("colocated", "async"), source, "rollout.mode")
    _check(r.inference_ranks >= 1, source, "rollout.inference_ranks", f"must be >= 1, got {r.inference_ranks}")
    _check(r.max_staleness >= 0, source, "rollout.max_staleness", f"must be >= 0, got {r.max_staleness}")
    _check(r.async_timeout_s > 0, source, "rollout.async_timeout_s", "must be > 0")
    _check(r.weight_bucket_mb >= 1, source, "rollout.weight_bucket_mb", "must be >= 1")
    if r.mode == "async":
        _check(r.inference_ranks % r.tensor_parallel_size == 0, source, "rollout.inference_ranks",
               f"must be a multiple of rollout.tensor_parallel_size={r.tensor_parallel_size}")

    e = cfg.engine
    _one_of(e.zero_stage, (0, 1, 2, 3), source, "engine.zero_stage")
    _check(e.zero3_persistence_threshold is None or e.zero3_persistence_threshold >= 0, source,
           "engine.zero3_persistence_threshold", "must be >= 0")
    _one_of(e.precision, ("fp32", "bf16"), source, "engine.precision")
    _one_of(e.dist_backend, ("auto", "nccl", "gloo"), source, "engine.dist_backend")
    _check(e.collective_timeout_s > 0, source, "engine.collective_timeout_s",
           f"must be > 0 seconds, got {e.collective_timeout_s}")

    g = cfg.grpo
    _check(g.steps >= 0, source, "grpo.steps", "must be >= 0")
    _check(g.prompts_per_step > 0, source, "grpo.prompts_per_step", "must be > 0")
    _check(g.group_size >= 2, source, "grpo.group_size", f"must be >= 2 (advantages compare within a group), got {g.group_size}")
    _check(g.micro_batch_size > 0, source, "grpo.micro_batch_size", "must be > 0")
    _check(0.0 <= g.max_padding <= 1.0, source, "grpo.max_padding", "must be in [0, 1]")
    _check(g.shared_row_tokens >= 1, source, "grpo.shared_row_tokens", "must be >= 1")
    _check(g.num_iterations >= 1, source, "grpo.num_iterations", "must be >= 1")
    _validate_optim(g.optim, source, "grpo.optim")
    _one_of(g.advantage, ("grpo", "dr_grpo", "rloo"), source, "grpo.advantage")
    _one_of(g.scale, ("group", "batch", "none"), source, "grpo.scale")
    _check(0 <= g.epsilon_low < 1, source, "grpo.epsilon_low", "must be in [0, 1)")
    _check(g.epsilon_high >= 0, source, "grpo.epsilon_high", "must be >= 0")
    _one_of(g.ratio_level, ("token", "sequence"), source, "grpo.ratio_level")
    _one_of(g.aggregation, ("seq_mean", "token_mean", "constant"), source, "grpo.aggregation")
    _check(g.constant_normalizer is None or g.constant_normalizer > 0, source, "grpo.constant_normalizer", "must be > 0")
    _check(g.beta >= 0, source, "grpo.beta", "must be >= 0")
    _one_of(g.tis_level, ("none", "token", "sequence"), source, "grpo.tis_level")
    _check(g.tis_cap >= 1, source, "grpo.tis_cap", "must be >= 1")
    _check(0 <= g.overlong_buffer < r.max_tokens, source, "grpo.overlong_buffer", "must be in [0, rollout.max_tokens)")
    _check(g.max_sampling_rounds >= 1, source, "grpo.max_sampling_rounds", "must be >= 1")
    _check(g.eval_every >= 0 and g.save_every >= 0, source, "grpo.eval_every", "eval_every/save_every must be >= 0")
    _check(g.sync_tolerance is None or g.sync_tolerance > 0, source, "grpo.sync_tolerance", "must be > 0 when set")

    s = cfg.sft
    _check(s.epochs >= 1, source, "sft.epochs", "must be >= 1")
    _check(s.max_steps is None or s.max_steps > 0, source, "sft.max_steps", "must be > 0 when set")
    _check(s.tokens_per_batch >= s.max_seq_len, source, "sft.tokens_per_batch", "must be >= sft.max_seq_len")
    _check(s.max_seq_len > 0, source, "sft.max_seq_len", "must be > 0")
    _check(s.patience >= 0, source, "sft.patience", "must be >= 0")
    _check(s.eval_every >= 0, source, "sft.eval_every", "must be >= 0")
    _check(s.micro_batch_size is None or s.micro_batch_size > 0, source, "sft.micro_batch_size", "must be > 0")
    _check(s.eval_size is None or s.eval_size >= 0, source, "sft.eval_size", "must be >= 0")
    _validate_optim(s.optim, source, "sft.optim")

    p = cfg.dpo
    _one_of(p.pairs, ("verifier", "file"), source, "dpo.pairs")
    if "dpo" in cfg.stages and p.pairs == "file":
        _check(p.pairs_file is not None, source, "dpo.pairs_file", "must be set when dpo.pairs is 'file'")
    _check(p.samples_per_prompt >= 2, source, "dpo.samples_per_prompt", "must be >= 2 to find a contrast")
    _one_of(p.chosen_rule, ("shortest", "random"), source, "dpo.chosen_rule")
    _one_of(p.rejected_rule, ("most_frequent", "random", "longest"), source, "dpo.rejected_rule")
    _one_of(p.loss_type, ("sigmoid", "ipo", "robust", "hinge", "simpo"), source, "dpo.loss_type")
    _check(p.beta > 0, source, "dpo.beta", "must be > 0")
    _check(0 <= p.label_smoothing < 0.5, source, "dpo.label_smoothing", "must be in [0, 0.5)")
    _check(p.rpo_alpha >= 0, source, "dpo.rpo_alpha", "must be >= 0")
    _check(p.epochs >= 1, source, "dpo.epochs", "must be >= 1")
    _check(p.batch_size >= 1, source, "dpo.batch_size", "must be >= 1")
    _check(p.max_steps is None or p.max_steps > 0, source, "dpo.max_steps", "must be > 0 when set")
    _check(p.micro_batch_size is None or p.micro_batch_size > 0, source, "dpo.micro_batch_size", "must be > 0")
    _check(p.eval_every >= 0, source, "dpo.eval_every", "must be >= 0")
    _validate_optim(p.optim, source, "dpo.optim")

    k = cfg.kto
    _one_of(k.data, ("verifier", "file"), source, "kto.data")
    if "kto" in cfg.stages and k.data == "file":
        _check(k.data_file is not None, source, "kto.data_file", "must be set when kto.data is 'file'")
    _check(k.eval_size >= 0, source, "kto.eval_size", "must be >= 0")
    _check(k.samples_per_prompt >= 1, source, "kto.samples_per_prompt", "must be >= 1")
    _check(k.num_prompts >= 1, source, "kto.num_prompts", "must be >= 1")
    _one_of(k.truncated_correct, ("undesirable", "desirable"), source, "kto.truncated_correct")
    _one_of(k.balance, ("none", "downsample", "weights"), source, "kto.balance")
    _check(k.beta > 0, source, "kto.beta", "must be > 0")
    _check(k.desirable_weight >= 0 and k.undesirable_weight >= 0, source, "kto.desirable_weight",
           "desirable_weight and undesirable_weight must be >= 0")
    _check(k.desirable_weight + k.undesirable_weight > 0, source, "kto.desirable_weight",
           "desirable_weight and undesirable_weight cannot both be 0")
    _check(k.sft_alpha >= 0, source, "kto.sft_alpha", "must be >= 0")
    _check(k.epochs >= 1, source, "kto.epochs", "must be >= 1")
    _check(k.batch_size >= 2, source, "kto.batch_size",
           "must be >= 2 (the reference point is estimated from mismatched pairs within a step)")
    _check(k.max_steps is None or k.max_steps > 0, source, "kto.max_steps", "must be > 0 when set")
    _check(k.micro_batch_size is None or k.micro_batch_size > 0, source, "kto.micro_batch_size", "must be > 0")
    _check(k.max_seq_len > 1, source, "kto.max_seq_len", "must be > 1")
    _check(k.eval_every >= 0 and k.save_every >= 0, source, "kto.eval_every", "eval_every/save_every must be >= 0")
    _validate_optim(k.optim, source, "kto.optim")

    _validate_tools(cfg, source)
    _check(cfg.eval.num_problems >= 0, source, "eval.num_problems", "must be >= 0")
    _check(cfg.eval.k >= 0, source, "eval.k", "must be >= 0")
    gate = cfg.eval.gate
    if gate.metric is not None:
        metrics = ["pass@1", "greedy_reward"] + ([f"{m}@{cfg.eval.k}" for m in ("pass", "maj", "mean")]
                                                 if cfg.eval.k > 1 else [])
        _one_of(gate.metric, tuple(metrics), source, "eval.gate.metric")
        _check(cfg.eval.num_problems > 0, source, "eval.gate.metric",
               "a gate needs the held-out evaluation: set eval.num_problems > 0")
    _check(gate.max_drop >= 0, source, "eval.gate.max_drop", f"must be >= 0, got {gate.max_drop}")
    _one_of(gate.action, ("stop", "fallback"), source, "eval.gate.action")

    o = cfg.doctor_options
    _check(o.num_prompts >= 1, source, "doctor_options.num_prompts", "must be >= 1")
    _check(o.num_reference_rows >= 0, source, "doctor_options.num_reference_rows", "must be >= 0")
    for key in ("max_bad_reference_share", "max_truncated_share", "max_zero_variance_share"):
        _check(0 <= getattr(o, key) <= 1, source, f"doctor_options.{key}", "must be in [0, 1]")
    _check(o.logprob_tolerance is None or o.logprob_tolerance > 0, source, "doctor_options.logprob_tolerance",
           "must be > 0 when set")
    _check(o.num_gpus is None or o.num_gpus >= 1, source, "doctor_options.num_gpus", "must be >= 1 when set")
    _check(o.gpu_memory_gb is None or o.gpu_memory_gb > 0, source, "doctor_options.gpu_memory_gb", "must be > 0")


def gpu_features(cfg: RunConfig) -> list[str]:
    """The settings of this config that need a CUDA GPU."""
    r, e = cfg.rollout, cfg.engine
    return [k for k, on in (("engine.precision=bf16", e.precision == "bf16"),
                            ("model.dtype=" + cfg.model.dtype, cfg.model.dtype != "float32"),
                            ("rollout.enable_sleep_mode=true", r.enable_sleep_mode),
                            ("rollout.tensor_parallel_size=" + str(r.tensor_parallel_size), r.tensor_parallel_size > 1),
                            ("engine.dist_backend=nccl", e.dist_backend == "nccl")) if on]


def check_training_precision(cfg: RunConfig, source: str = "config") -> None:
    """Refuse weight dtypes that cannot train well (evaluation may use any): weights loaded in 16 bits
    need DeepSpeed's bf16 mode, which keeps fp32 master weights for AdamW; with precision fp32 the
    optimizer would update 16-bit weights directly and small updates would vanish."""
    _check(cfg.model.dtype != "bfloat16" or cfg.engine.precision == "bf16", source, "model.dtype",
           "bfloat16 weights train only with engine.precision: bf16 (fp32 master weights); "
           "or load float32 and let engine.precision: bf16 cast")
    _check(cfg.model.dtype != "float16", source, "model.dtype",
           "float16 training is not supported (no loss scaling); use bfloat16 with engine.precision: bf16 "
           "(float16 is fine for `grpo eval`)")


def check_hardware(cfg: RunConfig, source: str = "config") -> None:
    """Refuse GPU-only settings up front on a machine without CUDA, instead of failing deep inside
    DeepSpeed or vLLM. `grpo check` skips this so GPU configs can be validated anywhere."""
    import torch

    needs = gpu_features(cfg)
    if needs and not torch.cuda.is_available():
        key = needs[0].split("=")[0]
        raise ConfigError(f"{source}: key '{key}': {', '.join(needs)} need(s) a CUDA GPU and none is visible")


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_resolved(cfg: RunConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.yaml"
    out.write_text(to_yaml(cfg))
    return out
