"""Hooks that turn a Qwen3-MoE block spec into an Intern-S1-Pro one (router and attention swaps only)."""
from __future__ import annotations

import dataclasses
import functools
import warnings

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_s1.config.schema import ConfigError, ExperimentConfig, ModelConfig
from megatron_s1.models.pro.fope import FoPEOptions, FoPESelfAttention
from megatron_s1.models.pro.router import ProRouter
from megatron_s1.models.specs import with_moe_submodules


def uses_pro_router(m: ModelConfig) -> bool:
    return m.num_moe_experts is not None and ((m.moe_router_groups or 1) > 1 or m.moe_router_ste)


def validate_pro_options(cfg: ExperimentConfig) -> None:
    m, p = cfg.model, cfg.parallel
    if m.position_embedding_type not in ("rope", "fope"):
        raise ConfigError(f"model.position_embedding_type must be rope or fope, got {m.position_embedding_type!r}")
    groups = m.moe_router_groups
    if groups is not None:
        if m.num_moe_experts is None:
            raise ConfigError("model.moe_router_groups needs an MoE model (model.num_moe_experts)")
        if groups < 1 or m.num_moe_experts % groups or m.moe_router_topk % groups:
            raise ConfigError(f"model.moe_router_groups={groups} must divide model.num_moe_experts="
                              f"{m.num_moe_experts} and model.moe_router_topk={m.moe_router_topk}")
        if groups % p.expert:
            warnings.warn(f"moe_router_groups={groups} is not a multiple of parallel.expert={p.expert}: "
                          "EP ranks are not exactly balanced", stacklevel=2)
    if m.moe_router_ste_temperature <= 0:
        raise ConfigError("model.moe_router_ste_temperature must be > 0")
    if m.position_embedding_type == "fope":
        if p.context > 1:
            raise ConfigError("model.position_embedding_type=fope does not support parallel.context > 1 yet")
        if m.fope_learnable and not m.fope_sep_head and p.tensor > 1:
            raise ConfigError("learnable FoPE without fope_sep_head is replicated across TP ranks that see "
                              "different heads; set model.fope_sep_head=true or model.fope_learnable=false")
        if m.fope_num_inv_freq is not None and not 0 < m.fope_num_inv_freq <= m.kv_channels // 2:
            raise ConfigError(f"model.fope_num_inv_freq must be in [1, kv_channels/2={m.kv_channels // 2}]")


def apply_pro_spec(m: ModelConfig, block):
    """Return `block` (TransformerBlockSubmodules) with ProRouter and/or FoPESelfAttention swapped in."""
    router = None
    if uses_pro_router(m):
        router = functools.partial(ProRouter, num_groups=m.moe_router_groups, ste=m.moe_router_ste,
                                   ste_temperature=m.moe_router_ste_temperature)
    fope = None
    if m.position_embedding_type == "fope":
        fope = FoPEOptions(rotary_base=float(m.rotary_base), max_position_embeddings=m.max_position_embeddings,
                           init_factor=m.fope_init_factor, sep_head=m.fope_sep_head,
                           num_inv_freq=m.fope_num_inv_freq, learnable=m.fope_learnable)
    if router is None and fope is None:
        return block
    layers = []
    for layer in block.layer_specs:
        sub = layer.submodules
        changes = {}
        if router is not None:
            changes["mlp"] = with_moe_submodules(sub.mlp, router=router)
        if fope is not None:
            attn = sub.self_attention
            changes["self_attention"] = ModuleSpec(module=FoPESelfAttention, params={**attn.params, "fope": fope},
                                                   submodules=attn.submodules)
        layers.append(ModuleSpec(module=layer.module, params=layer.params,
                                 submodules=dataclasses.replace(sub, **changes)))
    return dataclasses.replace(block, layer_specs=layers)
