"""Experiment configuration: dataclasses, YAML recipes and dotted command-line overrides.

A recipe is a YAML file whose top-level sections mirror `ExperimentConfig`. Overrides look like
`train.steps=20 model.num_layers=2` and are parsed as YAML scalars/lists. Every key is checked:
a typo gets one error line with the closest valid key.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from megatron_s1.models.presets import MM_DEFAULT_VISION, encoder_preset_fields, preset_fields


class ConfigError(ValueError):
    """A user-facing configuration or input problem; the message is one line naming the problem and the fix.
    The CLI prints it as `error: ...` and exits with status 2 (megatron_s1/console.py)."""


class RunError(RuntimeError):
    """A runtime failure reported as one line naming the problem and the fix (exit code 1): a full disk, a run
    directory in use, no complete checkpoint to resume from."""


@dataclass
class RunConfig:
    dir: str = "runs/default"  # checkpoints/, metrics.jsonl and tensorboard/ live here
    seed: int = 1234


@dataclass
class ModelConfig:
    preset: Optional[str] = None  # fills the fields below that are not set explicitly
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_query_groups: int = 2
    kv_channels: int = 16  # head_dim
    ffn_hidden_size: int = 128
    num_moe_experts: Optional[int] = None
    moe_router_topk: int = 2
    moe_ffn_hidden_size: Optional[int] = None
    moe_norm_topk_prob: bool = True
    moe_shared_expert_intermediate_size: Optional[int] = None
    moe_aux_loss_coeff: float = 1e-3
    moe_router_load_balancing_type: str = "aux_loss"
    moe_token_dispatcher_type: str = "alltoall"  # or allgather / flex
    # Routed-expert implementation: auto | grouped_mm (torch grouped GEMM, device-side expert counts; BF16) | te (TE
    # GroupedLinear; FP8, expert TP) | grouped_mm_fp8 (grouped_mm with rowwise-FP8 GEMMs via torch._scaled_grouped_mm,
    # no host sync; CUDA SM 8.9+, model.fp8 unset) | sequential (one MLP per expert). auto: grouped_mm on the TE spec in BF16, te
    # when the experts run in FP8 or expert-TP > 1, sequential on the local (CPU) spec. docs/performance.md.
    moe_experts: str = "auto"
    vocab_size: int = 2048
    max_position_embeddings: int = 512
    normalization: str = "RMSNorm"
    norm_epsilon: float = 1e-6
    qk_layernorm: bool = True
    rotary_base: int = 1_000_000
    untie_embeddings_and_output_weights: bool = True
    add_qkv_bias: bool = False
    activation: str = "swiglu"
    init_method_std: float = 0.02
    spec: str = "auto"  # auto | te | local: TE when TransformerEngine + CUDA are present
    params_dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    fp8: Optional[str] = None  # None | delayed | tensorwise | blockwise
    # Which GEMMs run in FP8 when model.fp8 is set: all (every decoder-block linear) | experts (routed-expert
    # linears only, BF16 elsewhere: the Intern-S1-Pro selection).
    fp8_modules: str = "all"
    # FP8 weights kept by TE across micro-batches (Megatron's fp8_param: primary weights in FP8, quantised once per
    # optimizer step instead of once per micro-batch GEMM). Needs model.fp8.
    fp8_param: bool = False
    # Pad each expert's routed token count to the FP8 GEMM alignment in the router (Megatron's
    # moe_router_padding_for_quantization) instead of padding/unpadding activations around TE's grouped GEMM.
    moe_router_padding_fp8: bool = False
    fp32_lm_head: bool = False  # output projection + logits in fp32 (Intern-S1-Pro keeps the LM head in FP32)
    recompute: Optional[str] = None  # None | selective (core attention) | full | moe (selective, MoE layers only)
    # TE-spec fusions (RoPE, MoE permute and router, fused cross-entropy, TE wgrad accumulation into main_grad):
    # measured faster on H100 and numerically equivalent, so on by default (docs/performance.md).
    fusions: bool = True
    # Grouped experts (moe_experts=grouped_mm / grouped_mm_fp8): weight gradient added straight into the fp32
    # main_grad by a Triton grouped GEMM (models/grouped_wgrad.py). Off until its GPU timing is measured
    # (docs/performance.md, session 11); needs parallel.overlap_grad_reduce=false.
    moe_wgrad_fusion: bool = False
    # Token cross-entropy: auto (triton on the TE spec with model.fusions, else megatron) | triton (our two-pass
    # kernel, models/cross_entropy.py) | megatron (Megatron-Core's; its fused version with model.fusions).
    cross_entropy: str = "auto"
    # Intern-S1-Pro options (megatron_s1/models/pro, docs/intern_s1_pro.md).
    moe_router_groups: Optional[int] = None  # grouped router: G groups, top-(topk/G) in each (None = plain top-k)
    moe_router_ste: bool = False  # straight-through router gradient through the dense softmax (Pro Eq. 2-3)
    moe_router_ste_temperature: float = 1.0  # tau of the dense softmax used by the STE backward
    position_embedding_type: str = "rope"  # rope | fope (Fourier position encoding)
    fope_init_factor: float = 0.5  # gain of the random part of the FoPE mixing (0 = identity = RoPE)
    fope_sep_head: bool = True  # one FoPE mixing matrix per KV head
    fope_num_inv_freq: Optional[int] = None  # kept frequencies; None = those with period < max_position_embeddings
    fope_learnable: bool = True  # train the FoPE mixing coefficients


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    virtual_pipeline: Optional[int] = None  # model chunks per pipeline rank (interleaved schedule)
    expert: int = 1
    expert_tensor: Optional[int] = None  # defaults to `tensor`
    context: int = 1
    sequence_parallel: bool = False  # forced on for MoE + TP
    distributed_optimizer: str = "auto"  # auto (on with CUDA and DP > 1) | true | false
    overlap_grad_reduce: bool = False
    overlap_param_gather: bool = False


@dataclass
class DataConfig:
    # Weighted blend: a list of [weight, path_prefix] pairs or plain prefixes (.bin/.idx without suffix).
    blend: list = field(default_factory=list)
    mock: bool = False  # random tokens instead of data.blend (benchmarks, smoke tests)
    split: str = "98,1,1"  # train,valid,test proportions
    tokenizer: Optional[str] = None  # HF byte-level BPE directory; default: the bundled tokenizer
    seq_length: int = 128
    micro_batch_size: int = 2
    num_workers: int = 0
    cache_dir: Optional[str] = None  # index cache for BlendedMegatronDatasetBuilder; default run.dir/data_cache
    # Whole-document packing (needs micro_batch_size=1; one pack per micro-batch): none = Megatron's
    # concatenated fixed-length samples; naive = next-fit packing + round-robin ranks; vlbs = best-fit
    # packing + per-step balancing of a*tokens + b*sum(len^2) over DP ranks (Intern-S1 VLBS).
    packing: str = "none"
    packing_epochs: int = 1
    vlbs_window_steps: int = 16
    vlbs_cost_a: float = 1.0
    vlbs_cost_b: float = 1.0 / 4096


@dataclass
class TrainConfig:
    task: str = "pretrain"  # pretrain | mm_pretrain | sft | ... (see training/tasks.py)
    steps: int = 10
    # Batch-size warmup on tokens (Intern-S1): [[tokens_seen, global_batch_tokens], ...]; the batch
    # switches when consumed tokens cross a stage boundary.
    global_batch_tokens: list = field(default_factory=lambda: [[0, 1024]])
    log_interval: int = 1
    eval_interval: int = 0  # 0 = no periodic eval
    eval_iters: int = 2
    clip_grad: float = 1.0
    skip_grad_norm_above: Optional[float] = None  # skip (and count) steps with a larger grad norm
    exit_signal_handling: bool = True  # SIGTERM/SIGUSR1 -> finish step, save, exit 0
    exit_at_step: Optional[int] = None  # save and exit after this step (the schedule still spans train.steps)
    resume_step: Optional[int] = None  # resume from run.dir's iter_<N> (complete) instead of the latest checkpoint
    # [first, last] steps to record with torch.profiler (CPU + CUDA): run.dir/profile/{trace,kernels}_rank*.{json,txt}
    profile_steps: Optional[list] = None
    # Gradient noise scale B_simple = tr(Sigma)/|G|^2 from micro-batch vs global-batch gradient norms (McCandlish et
    # al. 2018, App. A.1), logged as noise_* / critical_batch_* (EMA with this decay); pure DP only. docs/scaling.md.
    noise_scale: bool = False
    noise_scale_ema: float = 0.9


@dataclass
class OptimizerConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    # The LR schedule is defined on tokens so it stays consistent across batch-size switches.
    warmup_tokens: int = 0
    decay_style: str = "WSD"  # WSD | cosine | linear | constant
    decay_tokens: Optional[int] = None  # total schedule length; default: tokens of train.steps
    wsd_decay_tokens: Optional[int] = None  # length of the final decay phase (WSD); default 10%
    wsd_decay_style: str = "linear"  # linear | cosine | exponential | minus_sqrt
    # TE FusedAdam's precision-aware mode (Megatron-Core's use_precision_aware_optimizer; needs the distributed
    # optimizer and TE): fp32 master weights kept as the bf16 parameter + 16-bit remainders, bf16 parameters written
    # by the Adam kernel itself. moment_dtype=bf16 also stores Adam's two moments in bf16 (as DeepSeek-V3 does).
    precision_aware: bool = False
    moment_dtype: str = "fp32"  # fp32 | bf16 (needs precision_aware)


@dataclass
class CheckpointConfig:
    interval: int = 0  # 0 = only at the end and on signals
    keep_last: int = 2  # newest complete iterations kept; 0 keeps all
    async_save: bool = False  # GPU only
    resume: bool = True  # auto-resume from run.dir/checkpoints/latest
    pretrained: Optional[str] = None  # initial weights (model only) from another checkpoint dir
    # Non-shape model fields (e.g. [rotary_base]) the recipe may set to other values than checkpoint.pretrained
    # was trained with; any other stated difference is refused (docs/checkpointing.md).
    allow_model_changes: list = field(default_factory=list)
    save_final: bool = True  # save when train.steps is reached (benchmarks turn it off)


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    progress_bar: str = "auto"  # auto (when stdout is a terminal) | on | off
    # Library warnings (TE / Apex absent, deprecations) on every rank; off: rank 0 and our own lines only.
    verbose: bool = False


@dataclass
class VisionConfig:
    """Vision tower + projector (multimodal tasks; see docs/multimodal.md): InternViT + pixel-unshuffle MLP
    (arch=internvit, Intern-S1) or the Qwen3-VL style ViT + patch merger (arch=pro, Intern-S1-Pro)."""
    preset: Optional[str] = None  # internvit-6b | internvit-300m | tiny-vit | intern-s1-pro-vit | tiny-pro-vit
    arch: str = "internvit"  # internvit | pro
    num_layers: int = 2
    hidden_size: int = 48
    num_attention_heads: int = 3  # padded up to a multiple of parallel.tensor
    ffn_hidden_size: int = 96
    normalization: str = "RMSNorm"  # RMSNorm | LayerNorm
    norm_epsilon: float = 1e-6
    qk_layernorm: bool = True  # RMS QK-norm over the full (unpadded) hidden size
    add_qkv_bias: bool = False
    image_size: int = 448
    patch_size: int = 14
    layer_scale_init: float = 0.1  # lambda_1 / lambda_2 initial value
    drop_path_rate: float = 0.0
    downsample_ratio: float = 0.5  # pixel unshuffle: 32x32 -> 16x16 tokens per 448 tile
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    # arch=pro (docs/intern_s1_pro.md): patch_size 16, T frames per patch, m x m patches per LLM token,
    # an N x N learned position table, images / videos resized to multiples of patch*m within these pixels.
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    min_pixels: int = 65536
    max_pixels: int = 16777216
    video_min_pixels: int = 4096
    video_max_pixels: int = 25165824


@dataclass
class TimeSeriesConfig:
    """Adaptive-patching time-series encoder (multimodal tasks)."""
    preset: Optional[str] = None  # intern-s1-ts | tiny-ts; null = no time-series encoder
    patch_hidden: int = 16
    patch_heads: int = 2
    patch_layers: int = 1
    patch_ffn: int = 32
    adapt_in_dim: int = 32  # 2 x patch_hidden after frame concat
    num_mel_bins: int = 8
    d_model: int = 32
    num_layers: int = 1
    num_heads: int = 2
    ffn_hidden_size: int = 64
    max_source_positions: int = 64
    out_dim: int = 32
    causal: bool = True  # the released encoder masks attention causally
    default_sampling_rate: float = 100.0  # Hz, for samples that give none


@dataclass
class MultimodalConfig:
    """Multimodal training switches (train.task=mm_pretrain)."""
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_timeseries: bool = False
    freeze_language_model: bool = False
    freeze_router: bool = False
    loss_weighting: str = "square"  # square (InternVL Eq. 4: 1/sqrt(l_i)) | token (every token alike)
    image_root: Optional[str] = None  # relative image/series paths resolve here; default: the jsonl's folder


@dataclass
class OrealConfig:
    """OREAL objective options (rl.algorithm=oreal; megatron_s1/rl/losses.py, docs/rl.md). Defaults: the paper."""
    variant: str = "paper"  # paper (BC on reward-positives + PG on negatives) | xtuner (split by A > 0, PPO term)
    advantage_weighted_positives: bool = False  # official configs' pos_mult_adv: positive term x A_i
    advantage_weighted_negatives: bool = False  # official code: negative term x A_i instead of reward -1
    positive_factor: float = 1.0  # c+ (official positive_loss_factor)
    negative_factor: float = 1.0  # eta (official negative_loss_factor; 0.5 in their configs)
    kl_coef: float = 0.0  # KL (k3) to the reference policy = checkpoint.pretrained (official configs: 0.01)
    clip_eps: float = 0.2  # xtuner variant: PPO clip range
    dual_clip: float = 3.0  # xtuner variant: dual-clip bound c on A < 0


@dataclass
class RLConfig:
    """Reinforcement learning (`megatron-s1 rl`; see docs/rl.md and megatron_s1/rl/)."""
    task: str = "toy_add"  # prompt source + reward (megatron_s1/rl/rewards.py, megatron_s1/rl/tasks.py)
    algorithm: str = "icepop"  # icepop (Pro Eq. 4-6) | grpo | oreal
    baseline: str = "loo"  # loo (leave-one-out, Pro Eq. 6) | grpo (group mean / std)
    grpo_std: str = "unbiased"  # std of rl.baseline=grpo: unbiased (n-1, as verl / XTuner / OREAL) | population
    prompts_per_step: int = 8
    samples_per_prompt: int = 8  # G
    mini_batches: int = 1  # policy updates per rollout batch
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    # Per-task sampling: task -> {temperature, top_p, top_k, max_new_tokens}, overriding the four settings above
    # for that task's prompts (a mixed-task batch decodes in one pass with per-row settings).
    sampling: dict = field(default_factory=dict)
    icepop_alpha: float = 0.5  # keep tokens with alpha < pi_train/pi_rollout < beta
    icepop_beta: float = 5.0
    # KL-Cov beta (0 = off). Penalises |log pi - log pi_old|, which is 0 on a rollout's first mini-batch: needs
    # rl.mini_batches >= 2 to act (refused otherwise).
    kl_cov_coef: float = 0.0
    kl_cov_fraction: float = 0.002  # top fraction of tokens by Cov(logp, A) (0.2% = KL-Cov code reading of k=0.2)
    engine: str = "local"  # local (colocated Megatron-Core sampling) | openai (external server)
    engine_url: Optional[str] = None
    routing_replay: bool = False  # replay rollout expert choices in the training forward (MoE)
    kv_cache: bool = True  # colocated engine: KV-cached decoding (false: re-forward the sequence per token)
    # colocated engine: auto (megatron.core DynamicInferenceEngine on CUDA, else LocalEngine) | dynamic | static
    local_engine: str = "auto"
    dynamic_kv_gb: float = 4.0  # dynamic engine: paged KV-cache budget (GiB), freed during the update
    online_filter: bool = True  # drop all-correct / all-wrong groups and degenerate responses
    freeze_router: bool = False
    freeze_vision: bool = True  # image prompts (InternS1Model): no gradients into the vision tower
    fp32_lm_head: bool = False
    # Mixture of rewards (prompts of several tasks in one batch): task -> weight of its reward (default 1), and
    # none | running (per-task running z-normalisation) for every task, or a mapping task -> none | running.
    reward_weights: dict = field(default_factory=dict)
    reward_normalisation: Any = "none"
    oreal: OrealConfig = field(default_factory=OrealConfig)


@dataclass
class SftConfig:
    """Supervised fine-tuning on chat jsonl (train.task=sft; see docs/sft.md)."""
    # Mixture: [{path: x.jsonl, ratio: 1.0, epochs: 1.0, family: general}, ...]; ratio (optional) is the
    # dataset's share of the mixture, epochs the passes over it (default size of the mixture).
    datasets: list = field(default_factory=list)
    ratios: Optional[list] = None  # overrides the datasets' ratios in order (ablations: sft.ratios=[3,1])
    mixture_samples: Optional[int] = None  # total conversations of the mixture; default from the epochs
    template: str = "auto"  # auto (tokenizer dir's chat_template, else qwen3) | qwen3 | jinja
    # System-prompt isolation: family -> system prefix; every conversation gets exactly its family's prefix.
    system_prompts: dict = field(default_factory=dict)
    default_family: Optional[str] = None  # family of datasets that name none
    loss_on: str = "all_assistant"  # all_assistant | last_assistant


@dataclass
class ExperimentConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    timeseries: TimeSeriesConfig = field(default_factory=TimeSeriesConfig)
    mm: MultimodalConfig = field(default_factory=MultimodalConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = tuple(f.name for f in dataclasses.fields(ExperimentConfig))


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(value: Any, annotation: Any, dotted: str) -> Any:
    """Check (and lightly convert) a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if origin is typing.Union and type(None) in args:
            return None
        raise ConfigError(f"config key {dotted!r} cannot be null; give a value of type {annotation}")
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, dotted)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {dotted!r} expects true/false, got {value!r}")
    if annotation in (int, float) and isinstance(value, str):
        # YAML 1.1 reads "2e-4" (no dot) as a string; accept it as the number it means.
        try:
            value = float(value)
        except ValueError:
            pass
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"config key {dotted!r} expects an integer, got {value!r}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {dotted!r} expects a number, got {value!r}")
        return float(value)
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            return "on" if value else "off"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {dotted!r} expects a string, got {value!r}")
        return str(value)
    if annotation is list or origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {dotted!r} expects a list, got {value!r}")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {dotted!r} expects a mapping (e.g. {{math: 1.0}}), got {value!r}")
        return value
    return value


def _apply(section_obj: Any, values: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(section_obj))
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            raise ConfigError(f"unknown config key {dotted!r}{_suggest(key, hints)}")
        if dataclasses.is_dataclass(hints[key]):
            if not isinstance(value, dict):
                raise ConfigError(f"config section {dotted!r} must be a mapping, got {value!r}")
            _apply(getattr(section_obj, key), value, dotted)
        else:
            setattr(section_obj, key, _coerce(value, hints[key], dotted))


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ['train.steps=20', 'model.num_layers=2'] into a nested dict (values parsed as YAML)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value (e.g. train.steps=20)")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r} is not valid YAML ({_yaml_problem(err)}); quote strings and "
                              "close brackets, e.g. data.blend=[a,b] or 'data.split=\"98,1,1\"'") from None
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Build an ExperimentConfig from a YAML recipe plus dotted overrides, then apply the model preset."""
    raw: dict = {}
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path!r} does not exist; pass an existing recipe such as "
                              "examples/cpt/tiny_cpu.yaml")
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else path
            raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(err)}); fix the recipe (indentation, "
                              "unclosed brackets or quotes)") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"config file {path!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                              "save the recipe as UTF-8") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of sections (run:, model:, ...)")
    raw = _merge(raw, parse_overrides(overrides or []))
    for section, value in list(raw.items()):
        if value is None:  # `model:` with nothing under it
            raw[section] = {}
        elif not isinstance(value, dict) and section in SECTIONS:
            raise ConfigError(f"config section {section!r} must be a mapping of keys (e.g. {section}.KEY=VALUE "
                              f"or `{section}:` with indented keys in the recipe), got {value!r}")

    cfg = ExperimentConfig()
    model_raw = dict(raw.get("model") or {})
    preset = model_raw.get("preset")
    if preset is not None:
        try:
            preset_values = preset_fields(preset)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        # Preset first, explicit keys on top.
        raw["model"] = {**preset_values, **model_raw}
    # Multimodal encoders: with train.task=mm_pretrain, model.preset intern-s1 / intern-s1-mini means the full
    # multimodal model, so vision.preset defaults to its InternViT; explicit encoder keys win over presets.
    task = (raw.get("train") or {}).get("task")
    vision_raw = dict(raw.get("vision") or {})
    if task == "mm_pretrain" and "preset" not in vision_raw and preset in MM_DEFAULT_VISION:
        vision_raw["preset"] = MM_DEFAULT_VISION[preset]
        raw["vision"] = vision_raw
    for kind in ("vision", "timeseries"):
        section_raw = dict(raw.get(kind) or {})
        if section_raw.get("preset") is not None:
            try:
                values = encoder_preset_fields(kind, section_raw["preset"])
            except ValueError as err:
                raise ConfigError(str(err)) from None
            raw[kind] = {**values, **section_raw}
    _apply(cfg, raw, "")
    # Dotted keys the recipe, its presets or the overrides set (the rest may come from a pretrained checkpoint).
    cfg.stated = frozenset(_dotted_keys(raw))
    check_values(cfg)
    return cfg


def _dotted_keys(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def _yaml_problem(err: Exception) -> str:
    return " ".join(str(getattr(err, "problem", None) or err).split())


def check_values(cfg: ExperimentConfig) -> None:
    """Ranges the loop relies on, checked before anything is built (a bad value costs no model build)."""
    d, t, m = cfg.data, cfg.train, cfg.model
    for dotted, value, least in (("model.num_layers", m.num_layers, 1), ("model.hidden_size", m.hidden_size, 1),
                                 ("model.num_attention_heads", m.num_attention_heads, 1),
                                 ("data.micro_batch_size", d.micro_batch_size, 1), ("data.seq_length", d.seq_length, 1),
                                 ("train.steps", t.steps, 0), ("train.log_interval", t.log_interval, 1),
                                 ("train.eval_interval", t.eval_interval, 0), ("train.eval_iters", t.eval_iters, 0),
                                 ("checkpoint.interval", cfg.checkpoint.interval, 0),
                                 ("checkpoint.keep_last", cfg.checkpoint.keep_last, 0)):
        if value < least:
            raise ConfigError(f"{dotted}={value} must be >= {least}")
    stages = t.global_batch_tokens
    for stage in stages if isinstance(stages, list) else []:
        if isinstance(stage, (list, tuple)) and len(stage) == 2 and isinstance(stage[1], (int, float)) \
                and stage[1] <= 0:
            raise ConfigError(f"train.global_batch_tokens stage {stage!r} has {stage[1]} tokens per step; give a "
                              f"positive multiple of data.seq_length x data.micro_batch_size, e.g. "
                              f"[[0, {d.seq_length * d.micro_batch_size * 8}]]")
    split_proportions(d.split)


# Settings a resumed run must keep: the data position (consumed samples) counts sequences of data.seq_length tokens.
RESUME_FIXED = (("data", "seq_length"),)


def check_resume_config(cfg: ExperimentConfig, saved: dict, ckpt_dir: str) -> None:
    """Refuse to resume when a setting in RESUME_FIXED differs from the checkpoint's recorded config."""
    for section, key in RESUME_FIXED:
        before, now = (saved.get(section) or {}).get(key), getattr(getattr(cfg, section), key)
        if before is not None and before != now:
            raise ConfigError(f"{section}.{key}={now} but the checkpoint {ckpt_dir} was trained with {section}.{key}="
                              f"{before}; resume with {section}.{key}={before}, or start a new run.dir (with "
                              f"checkpoint.pretrained={ckpt_dir} to keep the weights)")


def split_proportions(split: str) -> list[float]:
    """data.split ("98,1,1" or "98/1/1"; missing trailing entries are 0, as in Megatron-Core) as three
    non-negative proportions with a positive sum."""
    try:
        weights = [float(x) for x in str(split).replace("/", ",").split(",")]
    except ValueError:
        weights = []
    weights += [0.0] * (3 - len(weights))
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError(f"data.split={split!r} must be three non-negative train,valid,test proportions, e.g. "
                          "data.split=98,1,1")
    return weights


def config_from_dict(values: dict) -> ExperimentConfig:
    """Rebuild a resolved config (e.g. the copy stored in a checkpoint)."""
    cfg = ExperimentConfig()
    _apply(cfg, values, "")
    return cfg
