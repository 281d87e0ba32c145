"""Layer-spec selection: TransformerEngine spec when TE and CUDA are present, local spec otherwise."""
from __future__ import annotations

import dataclasses
import functools
import importlib.util

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_s1.config.schema import ConfigError
from megatron_s1.models.experts import GroupedMMExperts, GroupedMMFP8Experts
from megatron_s1.models.norms import RMSNorm

MOE_EXPERTS_CHOICES = ("auto", "grouped_mm", "grouped_mm_fp8", "te", "sequential")


def te_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def resolve_spec_kind(requested: str) -> str:
    """'auto' -> 'te' or 'local'; an explicit 'te' without TE/CUDA is an error."""
    if requested not in ("auto", "te", "local"):
        raise ValueError(f"model.spec must be auto, te or local, got {requested!r}")
    if requested == "auto":
        return "te" if te_available() else "local"
    if requested == "te" and not te_available():
        raise ValueError("model.spec=te needs TransformerEngine and a CUDA GPU; install the `gpu` extra or "
                         "set model.spec=local")
    return requested


def resolve_experts_impl(cfg) -> str | None:
    """model.moe_experts -> grouped_mm | te | sequential (None for a dense model); bad combinations -> ConfigError."""
    m, p = cfg.model, cfg.parallel
    if m.moe_experts not in MOE_EXPERTS_CHOICES:
        raise ConfigError(f"model.moe_experts must be one of {', '.join(MOE_EXPERTS_CHOICES)}, got {m.moe_experts!r}")
    if m.num_moe_experts is None:
        return None
    kind = resolve_spec_kind(m.spec)
    fp8_experts = m.fp8 is not None  # fp8_modules=all and =experts both run the routed experts in FP8
    expert_tp = p.expert_tensor or p.tensor
    aligned = m.hidden_size % 8 == 0 and (m.moe_ffn_hidden_size or m.ffn_hidden_size) % 8 == 0
    if m.moe_experts == "auto":
        if kind == "local":
            return "sequential"
        bf16 = m.params_dtype in ("auto", "bf16")
        return "grouped_mm" if bf16 and not fp8_experts and expert_tp == 1 and aligned else "te"
    if m.moe_experts == "te" and kind != "te":
        raise ConfigError("model.moe_experts=te needs the TransformerEngine spec (model.spec=te on a CUDA GPU); "
                          "use grouped_mm or sequential")
    if m.moe_experts == "grouped_mm_fp8":
        # Rowwise-scaled FP8 grouped GEMM (torch._scaled_grouped_mm): CUDA with FP8 tensor cores (SM 8.9+).
        if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
            raise ConfigError("model.moe_experts=grouped_mm_fp8 needs a CUDA GPU with FP8 (SM 8.9+, e.g. H100); "
                              "use grouped_mm or sequential")
        if not hasattr(torch, "_scaled_grouped_mm"):
            raise ConfigError("model.moe_experts=grouped_mm_fp8 needs torch._scaled_grouped_mm (torch >= 2.8)")
        if fp8_experts:
            raise ConfigError("model.moe_experts=grouped_mm_fp8 runs its own FP8 expert GEMMs but model.fp8 is set "
                              "(TE FP8 experts); unset model.fp8 or use model.moe_experts=te")
    if m.moe_experts in ("grouped_mm", "grouped_mm_fp8"):
        if fp8_experts and m.moe_experts == "grouped_mm":
            raise ConfigError("model.moe_experts=grouped_mm runs the experts in BF16 but model.fp8 is set; use "
                              "model.moe_experts=te (or auto) for FP8 experts")
        if expert_tp != 1:
            raise ConfigError(f"model.moe_experts={m.moe_experts} needs expert tensor parallel size 1, got {expert_tp}; "
                              "set parallel.expert_tensor=1 or model.moe_experts=te")
        if not aligned:
            raise ConfigError(f"model.moe_experts={m.moe_experts} needs model.hidden_size and the expert FFN size to be "
                              "multiples of 8 (16-byte aligned GEMM strides); use model.moe_experts=sequential")
    return m.moe_experts


def with_moe_submodules(mlp, **changes):
    """An MoE layer spec (functools.partial or ModuleSpec form) with some MoESubmodules replaced (router, experts)."""
    if isinstance(mlp, functools.partial) and "submodules" in mlp.keywords:
        subs = dataclasses.replace(mlp.keywords["submodules"], **changes)
        return functools.partial(mlp.func, *mlp.args, **{**mlp.keywords, "submodules": subs})
    if isinstance(mlp, ModuleSpec) and hasattr(mlp.submodules, "experts"):
        return ModuleSpec(module=mlp.module, params=mlp.params, submodules=dataclasses.replace(mlp.submodules, **changes))
    raise TypeError(f"cannot find the MoE submodules in layer spec {mlp!r}")


def _with_grouped_mm_experts(layer: ModuleSpec, experts=GroupedMMExperts) -> ModuleSpec:
    mlp = with_moe_submodules(layer.submodules.mlp, experts=experts)
    return ModuleSpec(module=layer.module, params=layer.params,
                      submodules=dataclasses.replace(layer.submodules, mlp=mlp))


def _local_layer_spec(num_experts, qk_layernorm: bool) -> ModuleSpec:
    spec = get_gpt_layer_local_spec(
        num_experts=num_experts, moe_grouped_gemm=False, qk_layernorm=qk_layernorm, normalization="RMSNorm"
    )
    # Swap Megatron's torch-norm wrapper (no sequence parallel) for ours, everywhere it appears.
    sub = spec.submodules
    attn = sub.self_attention
    attn_sub = attn.submodules
    if qk_layernorm:
        attn_sub = dataclasses.replace(attn_sub, q_layernorm=RMSNorm, k_layernorm=RMSNorm)
    # Checkpoint keys follow the TE spec, so one checkpoint loads with either spec. TE fuses the pre-MLP
    # norm into linear_fc1 for dense MLPs only; an MoE layer keeps its own pre_mlp_layernorm.
    keys_map = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    if num_experts is None:
        keys_map["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    sub = dataclasses.replace(
        sub,
        input_layernorm=RMSNorm,
        pre_mlp_layernorm=RMSNorm,
        self_attention=ModuleSpec(module=attn.module, params=attn.params, submodules=attn_sub),
        sharded_state_dict_keys_map=keys_map,
    )
    return ModuleSpec(module=spec.module, params=spec.params, submodules=sub)


def build_block_spec(kind: str, num_experts, qk_layernorm: bool, experts_impl: str | None,
                     num_local_layers: int) -> TransformerBlockSubmodules:
    """Block spec for the layers of one pipeline stage (or virtual stage); experts_impl from resolve_experts_impl."""
    if kind == "te":
        layer = get_gpt_layer_with_transformer_engine_spec(
            num_experts=num_experts, moe_grouped_gemm=experts_impl == "te", qk_layernorm=qk_layernorm
        )
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        layer = _local_layer_spec(num_experts, qk_layernorm)
        final_norm = RMSNorm
    if experts_impl == "grouped_mm":
        layer = _with_grouped_mm_experts(layer)
    elif experts_impl == "grouped_mm_fp8":
        layer = _with_grouped_mm_experts(layer, GroupedMMFP8Experts)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_local_layers, layer_norm=final_norm)
