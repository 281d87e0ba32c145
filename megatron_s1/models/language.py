"""Qwen3 / Qwen3-MoE language models (the Intern-S1 text backbones) on Megatron-Core's GPTModel.

Why GPTModel and not HybridModel: see docs/design.md (HF layer <-> Megatron layer is 1:1, the local
CPU spec works, and the HF conversion tables stay simple).
"""
from __future__ import annotations

import importlib.util
import math
import os
import shlex
import sys

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.transformer_block import get_num_layers_to_build

from megatron_s1.config.schema import ConfigError, ExperimentConfig, ModelConfig, ParallelConfig
from megatron_s1.models.experts import specialise_dispatchers
from megatron_s1.models.precision import restrict_fp8_to_experts, use_fp32_output_layer, validate_precision_options
from megatron_s1.models.specs import build_block_spec, resolve_experts_impl, resolve_spec_kind
from megatron_s1.models.pro.spec import apply_pro_spec, validate_pro_options

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_FP8_RECIPES = {"delayed": "delayed", "tensorwise": "tensorwise", "blockwise": "blockwise"}


def resolve_params_dtype(model: ModelConfig) -> torch.dtype:
    if model.params_dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if model.params_dtype not in _DTYPES:
        raise ConfigError(f"model.params_dtype must be auto, fp32 or bf16, got {model.params_dtype!r}")
    return _DTYPES[model.params_dtype]


def _require_launcher(parallel: ParallelConfig, processes: int, world_size: int) -> None:
    """A model-parallel layout run as one plain process (not under torchrun / srun): say how to launch it."""
    if world_size != 1 or processes == 1 or "WORLD_SIZE" in os.environ:
        return
    names = ("tensor", "pipeline", "context", "expert", "expert_tensor")
    sizes = " ".join(f"parallel.{n}={getattr(parallel, n)}" for n in names if (getattr(parallel, n) or 1) > 1)
    is_cli = os.path.basename(sys.argv[0]) in ("megatron-s1", "cli.py") and len(sys.argv) > 1
    command = shlex.join(sys.argv[1:]) if is_cli else "COMMAND --config RECIPE ..."
    raise ConfigError(f"{sizes} needs {processes} processes (or a multiple) but this is a single process; launch it "
                      f"with torchrun: torchrun --nproc-per-node {processes} -m megatron_s1.cli {command}")


def validate_model_parallel(model: ModelConfig, parallel: ParallelConfig, world_size: int) -> None:
    """Shape/layout checks that Megatron would otherwise report as assertion failures deep inside."""
    tp, pp, cp, ep = parallel.tensor, parallel.pipeline, parallel.context, parallel.expert
    for name, value in (("parallel.tensor", tp), ("parallel.pipeline", pp), ("parallel.context", cp),
                        ("parallel.expert", ep)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if model.num_attention_heads % tp:
        raise ConfigError(f"parallel.tensor={tp} does not divide model.num_attention_heads="
                          f"{model.num_attention_heads}; choose a TP size that divides it")
    if model.num_query_groups % tp:
        raise ConfigError(f"parallel.tensor={tp} does not divide model.num_query_groups="
                          f"{model.num_query_groups}; choose a TP size that divides it")
    if model.num_attention_heads % model.num_query_groups:
        raise ConfigError("model.num_query_groups must divide model.num_attention_heads")
    if model.num_moe_experts is None and ep > 1:
        raise ConfigError(f"parallel.expert={ep} needs an MoE model; set model.num_moe_experts or parallel.expert=1")
    if model.num_moe_experts is not None and model.num_moe_experts % ep:
        raise ConfigError(f"parallel.expert={ep} does not divide model.num_moe_experts={model.num_moe_experts}; "
                          "choose an EP size that divides it")
    etp = parallel.expert_tensor or tp
    _require_launcher(parallel, math.lcm(tp * pp * cp, etp * ep * pp if model.num_moe_experts else 1), world_size)
    if world_size % (tp * pp * cp):
        raise ConfigError(f"world size {world_size} is not divisible by TPxPPxCP = {tp}x{pp}x{cp}; "
                          "change the parallel sizes or the number of processes")
    if model.num_moe_experts is not None and world_size % (etp * ep * pp):
        raise ConfigError(f"world size {world_size} is not divisible by ETPxEPxPP = {etp}x{ep}x{pp}; "
                          "change the parallel sizes or the number of processes")
    layers_per_stage = model.num_layers / (pp * (parallel.virtual_pipeline or 1))
    if layers_per_stage != int(layers_per_stage):
        raise ConfigError(f"model.num_layers={model.num_layers} is not divisible by pipeline x virtual stages "
                          f"({pp}x{parallel.virtual_pipeline or 1})")


def build_transformer_config(cfg: ExperimentConfig) -> TransformerConfig:
    m, p = cfg.model, cfg.parallel
    validate_pro_options(cfg)
    validate_precision_options(m)
    dtype = resolve_params_dtype(m)
    on_gpu = torch.cuda.is_available()
    is_moe = m.num_moe_experts is not None
    if m.activation != "swiglu":
        raise ConfigError(f"model.activation={m.activation!r} is not supported; Qwen3 uses swiglu")
    # MoE + TP needs sequence parallel in Megatron-Core.
    sequence_parallel = p.sequence_parallel or (is_moe and p.tensor > 1)
    if p.tensor == 1:
        sequence_parallel = False
    kwargs = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=m.kv_channels,
        ffn_hidden_size=m.ffn_hidden_size,
        normalization=m.normalization,
        layernorm_epsilon=m.norm_epsilon,
        qk_layernorm=m.qk_layernorm,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline,
        context_parallel_size=p.context,
        expert_model_parallel_size=p.expert,
        expert_tensor_parallel_size=p.expert_tensor or p.tensor,
        sequence_parallel=sequence_parallel,
        use_cpu_initialization=not on_gpu,
        gradient_accumulation_fusion=False,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        variable_seq_lengths=is_moe and p.pipeline > 1,
    )
    if m.fusions and resolve_spec_kind(m.spec) == "te":
        # Megatron's own cross-entropy fusion: TE's is ~4% faster on the probe but Megatron-Core warns of known
        # stability issues with it.
        kwargs.update(apply_rope_fusion=True, cross_entropy_loss_fusion=True, cross_entropy_fusion_impl="native")
        if is_moe:
            kwargs.update(moe_permute_fusion=True, moe_router_fusion=True)
    if m.recompute == "full":
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif m.recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    elif m.recompute == "moe":
        if not is_moe:
            raise ConfigError("model.recompute=moe recomputes the MoE layers but the model is dense "
                              "(model.num_moe_experts is null); use selective or full")
        kwargs.update(recompute_granularity="selective", recompute_modules=["moe"])
    elif m.recompute is not None:
        raise ConfigError(f"model.recompute must be null, selective, full or moe, got {m.recompute!r}")
    if is_moe:
        kwargs.update(
            num_moe_experts=m.num_moe_experts,
            moe_router_topk=m.moe_router_topk,
            moe_ffn_hidden_size=m.moe_ffn_hidden_size or m.ffn_hidden_size,
            # norm_topk_prob=True <=> softmax over the selected top-k (Megatron's post-softmax routing).
            moe_router_pre_softmax=not m.moe_norm_topk_prob,
            moe_aux_loss_coeff=m.moe_aux_loss_coeff,
            moe_router_load_balancing_type=m.moe_router_load_balancing_type,
            moe_token_dispatcher_type=m.moe_token_dispatcher_type,
            moe_grouped_gemm=resolve_experts_impl(cfg) == "te",
            moe_shared_expert_intermediate_size=m.moe_shared_expert_intermediate_size,
            moe_router_dtype="fp32",
        )
    if m.fp8 is not None:
        if m.fp8 not in _FP8_RECIPES:
            raise ConfigError(f"model.fp8 must be null, delayed, tensorwise or blockwise, got {m.fp8!r}")
        if resolve_spec_kind(m.spec) != "te":
            raise ConfigError("model.fp8 needs the TransformerEngine spec (a CUDA GPU with TE installed)")
        kwargs.update(fp8="e4m3" if m.fp8 == "blockwise" else "hybrid", fp8_recipe=_FP8_RECIPES[m.fp8])
        if m.fp8_param:
            kwargs.update(fp8_param=True)
        if m.moe_router_padding_fp8:
            kwargs.update(moe_router_padding_for_quantization=True)
    return TransformerConfig(**kwargs)



class PositionIdRotary(torch.nn.Module):
    """RoPE looked up at explicit position ids instead of 0..S-1.

    Megatron's GPTModel applies RoPE by sequence index unless a THD packed sequence (TE) tells it where
    documents start. Without TE, packed documents carry restarting `position_ids`; this wrapper makes RoPE
    follow them, so a document in a pack is encoded exactly as it would be alone. Rows whose positions differ
    (left-padded RL batches, packs with different boundaries) get one table each ([s, b, 1, d], which
    Megatron's rotary application broadcasts like the usual [s, 1, 1, d]).
    """

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.position_ids = None

    def get_rotary_seq_len(self, *args, **kwargs):
        return self.inner.get_rotary_seq_len(*args, **kwargs)

    def forward(self, max_seq_len, *args, **kwargs):
        if self.position_ids is None:
            return self.inner(max_seq_len, *args, **kwargs)
        positions = self.position_ids
        table = self.inner(max(int(max_seq_len), int(positions.max()) + 1), *args, **kwargs)  # [S, 1, 1, d]
        if bool((positions == positions[:1]).all()):
            return table[positions[0]]
        return table[:, 0, 0][positions.t()].unsqueeze(2)


def resolve_cross_entropy(m: ModelConfig) -> str:
    """model.cross_entropy -> triton (models/cross_entropy.py) | megatron (Megatron-Core's, fused with model.fusions)."""
    if m.cross_entropy not in ("auto", "triton", "megatron"):
        raise ConfigError(f"model.cross_entropy must be auto, triton or megatron, got {m.cross_entropy!r}")
    triton_runs = importlib.util.find_spec("triton") is not None and (
        torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
    if m.cross_entropy == "auto":
        return "triton" if m.fusions and resolve_spec_kind(m.spec) == "te" and triton_runs else "megatron"
    if m.cross_entropy == "triton" and not triton_runs:
        raise ConfigError("model.cross_entropy=triton needs Triton and a CUDA GPU (or TRITON_INTERPRET=1 on the "
                          "CPU); use model.cross_entropy=megatron")
    return m.cross_entropy


class LanguageModel(GPTModel):
    """GPTModel whose RoPE follows `position_ids` on the local spec (packed documents on CPU) and whose loss can use
    our two-pass Triton cross-entropy."""

    cross_entropy_impl = "megatron"

    def compute_language_model_loss(self, labels, logits):
        if self.cross_entropy_impl != "triton":
            return super().compute_language_model_loss(labels, logits)
        from megatron_s1.models.cross_entropy import vocab_parallel_cross_entropy

        tp = self.pg_collection.tp
        loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1), tp if tp.size() > 1 else None)
        return loss.transpose(0, 1).contiguous()  # [s, b] -> [b, s], as Megatron's

    def forward(self, input_ids, position_ids, attention_mask, *args, **kwargs):
        if isinstance(getattr(self, "rotary_pos_emb", None), PositionIdRotary):
            rope_positions = position_ids
            ctx = kwargs.get("inference_context")
            if ctx is not None and position_ids is not None and ctx.is_static_batching():
                # Megatron's static KV cache slices the RoPE table by cache index ([offset, offset + s) for the new
                # queries, [0, offset + s) for the cached keys), so give each row its position at every cache
                # index: with left padding that is index - pad, read off this step's last position (pad indices
                # clamp to 0, as pad_batch's do in a full forward).
                end = ctx.sequence_len_offset + position_ids.shape[1]
                index = torch.arange(ctx.max_sequence_length, device=position_ids.device)
                rope_positions = (position_ids[:, -1:] - (end - 1) + index).clamp_min(0)
            self.rotary_pos_emb.position_ids = rope_positions
        return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)


def build_language_model(cfg: ExperimentConfig, config: TransformerConfig, pre_process: bool,
                         post_process: bool, vp_stage=None) -> GPTModel:
    """Model provider for one pipeline stage (or virtual stage)."""
    kind = resolve_spec_kind(cfg.model.spec)
    num_local_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    experts_impl = resolve_experts_impl(cfg)
    spec = build_block_spec(kind, cfg.model.num_moe_experts, cfg.model.qk_layernorm, experts_impl, num_local_layers)
    spec = apply_pro_spec(cfg.model, spec)  # Intern-S1-Pro router / FoPE swaps (no-op otherwise)
    model = LanguageModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=cfg.model.vocab_size,
        max_sequence_length=cfg.model.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=cfg.model.rotary_base,
        vp_stage=vp_stage,
    )
    if kind == "local":
        model.rotary_pos_emb = PositionIdRotary(model.rotary_pos_emb)
    specialise_dispatchers(model)
    model.cross_entropy_impl = resolve_cross_entropy(cfg.model)
    if cfg.model.fp8 is not None and cfg.model.fp8_modules == "experts":
        restrict_fp8_to_experts(model)
    if cfg.model.fp32_lm_head:
        use_fp32_output_layer(model)
    return model
