"""Layer-spec selection: TransformerEngine spec when TE and CUDA are present, local spec otherwise."""
from __future__ import annotations

import dataclasses
import importlib.util

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_s1.models.norms import RMSNorm


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


def build_block_spec(kind: str, num_experts, qk_layernorm: bool, moe_grouped_gemm: bool,
                     num_local_layers: int) -> TransformerBlockSubmodules:
    """Block spec for the layers of one pipeline stage (or virtual stage)."""
    if kind == "te":
        layer = get_gpt_layer_with_transformer_engine_spec(
            num_experts=num_experts, moe_grouped_gemm=moe_grouped_gemm, qk_layernorm=qk_layernorm
        )
        from megatron.core.extensions.transformer_engine import TENorm

        final_norm = TENorm
    else:
        layer = _local_layer_spec(num_experts, qk_layernorm)
        final_norm = RMSNorm
    return TransformerBlockSubmodules(layer_specs=[layer] * num_local_layers, layer_norm=final_norm)
