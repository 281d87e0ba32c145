"""Declarative HF <-> Megatron weight tables, one per architecture.

A `Rule` names one Megatron parameter (local-spec module name, TP=1, as in `GPTModel.state_dict()`) and the
HF tensor(s) it is made of, plus the `Transform` between the two. Patterns use `{layer}` and `{expert}`
placeholders; `expand()` instantiates a table for a concrete model shape.

Architectures are built from *components*: (hf_prefix, mcore_prefix, table). The Qwen3 text backbones are
one component; the InternS1 multimodal model will be three (language model, InternViT, projector) reusing
the Qwen3 tables under its own prefixes (see docs/conversion.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from megatron_s1.config.schema import ConfigError


class ConversionError(ConfigError):
    """A user-facing conversion problem; the message is one line naming the problem and the fix."""


# ----------------------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class Shapes:
    """The model dimensions a transform may need."""
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int


class Transform:
    """HF tensors (in rule order) <-> one Megatron tensor. Subclasses are pure functions of their inputs."""
    name = "identity"

    def to_mcore(self, tensors: Sequence[torch.Tensor], shapes: Shapes) -> torch.Tensor:
        (tensor,) = tensors
        return tensor

    def to_hf(self, tensor: torch.Tensor, shapes: Shapes) -> list[torch.Tensor]:
        return [tensor]

    def mcore_shape(self, hf_shapes: Sequence[tuple], shapes: Shapes) -> tuple:
        (shape,) = hf_shapes
        return tuple(shape)


class FusedQKV(Transform):
    """q_proj, k_proj, v_proj -> linear_qkv, interleaved per query group: [q_g0 (heads/groups rows of head_dim),
    k_g0, v_g0, q_g1, k_g1, v_g1, ...]. TP slices of this layout are whole query groups."""
    name = "fused_qkv"

    def to_mcore(self, tensors, shapes):
        q, k, v = tensors
        g, d = shapes.num_query_groups, shapes.head_dim
        per_group = shapes.num_attention_heads // g
        trailing = q.shape[1:]
        q = q.reshape(g, per_group * d, *trailing)
        k = k.reshape(g, d, *trailing)
        v = v.reshape(g, d, *trailing)
        return torch.cat([q, k, v], dim=1).reshape(g * (per_group + 2) * d, *trailing).contiguous()

    def to_hf(self, tensor, shapes):
        g, d = shapes.num_query_groups, shapes.head_dim
        per_group = shapes.num_attention_heads // g
        trailing = tensor.shape[1:]
        grouped = tensor.reshape(g, (per_group + 2) * d, *trailing)
        q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
        return [q.reshape(g * per_group * d, *trailing).contiguous(), k.reshape(g * d, *trailing).contiguous(),
                v.reshape(g * d, *trailing).contiguous()]

    def mcore_shape(self, hf_shapes, shapes):
        q, k, v = hf_shapes
        return (q[0] + k[0] + v[0], *q[1:])


class Concat(Transform):
    """Several HF tensors stacked along dim 0 (gate_proj, up_proj -> linear_fc1 = cat[gate, up])."""
    name = "concat"

    def __init__(self, parts: int = 2):
        self.parts = parts

    def to_mcore(self, tensors, shapes):
        return torch.cat(list(tensors), dim=0)

    def to_hf(self, tensor, shapes):
        return [t.contiguous() for t in torch.chunk(tensor, self.parts, dim=0)]

    def mcore_shape(self, hf_shapes, shapes):
        return (sum(s[0] for s in hf_shapes), *hf_shapes[0][1:])


IDENTITY = Transform()
FUSED_QKV = FusedQKV()
GATE_UP = Concat(2)


# ------------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    mcore: str  # Megatron parameter name pattern (local spec, no TP split)
    hf: tuple  # HF tensor name pattern(s)
    transform: Transform = IDENTITY
    when: Optional[str] = None  # only for models with this flag: "untied", "qk_norm", "moe", "dense"


@dataclass(frozen=True)
class Component:
    """One table mounted under an HF prefix and a Megatron prefix."""
    hf_prefix: str
    mcore_prefix: str
    rules: tuple


@dataclass(frozen=True)
class ConcreteRule:
    mcore: str
    hf: tuple
    transform: Transform
    layer: Optional[int]  # for per-layer streaming / grouping


def _fill(pattern: str, layer: Optional[int], expert: Optional[int]) -> str:
    out = pattern
    if layer is not None:
        out = out.replace("{layer}", str(layer))
    if expert is not None:
        out = out.replace("{expert}", str(expert))
    return out


def expand(components: Sequence[Component], num_layers: int, num_experts: Optional[int],
           flags: set) -> list[ConcreteRule]:
    """Instantiate the tables for a model with `num_layers` layers and `num_experts` experts (None = dense)."""
    out = []
    for comp in components:
        for rule in comp.rules:
            if rule.when is not None and rule.when not in flags:
                continue
            layers = range(num_layers) if "{layer}" in rule.mcore else [None]
            experts = range(num_experts or 0) if "{expert}" in rule.mcore else [None]
            for layer in layers:
                for expert in experts:
                    out.append(ConcreteRule(
                        mcore=comp.mcore_prefix + _fill(rule.mcore, layer, expert),
                        hf=tuple(comp.hf_prefix + _fill(h, layer, expert) for h in rule.hf),
                        transform=rule.transform, layer=layer))
    return out


# ---------------------------------------------------------------------------------------------- tables
_L = "decoder.layers.{layer}."
_H = "layers.{layer}."

QWEN3_COMMON = (
    Rule("embedding.word_embeddings.weight", ("embed_tokens.weight",)),
    Rule("decoder.final_layernorm.weight", ("norm.weight",)),
    Rule(_L + "input_layernorm.weight", (_H + "input_layernorm.weight",)),
    Rule(_L + "self_attention.linear_qkv.weight",
         (_H + "self_attn.q_proj.weight", _H + "self_attn.k_proj.weight", _H + "self_attn.v_proj.weight"), FUSED_QKV),
    Rule(_L + "self_attention.linear_proj.weight", (_H + "self_attn.o_proj.weight",)),
    Rule(_L + "self_attention.q_layernorm.weight", (_H + "self_attn.q_norm.weight",), when="qk_norm"),
    Rule(_L + "self_attention.k_layernorm.weight", (_H + "self_attn.k_norm.weight",), when="qk_norm"),
    Rule(_L + "pre_mlp_layernorm.weight", (_H + "post_attention_layernorm.weight",)),
)

QWEN3_DENSE_MLP = (
    Rule(_L + "mlp.linear_fc1.weight", (_H + "mlp.gate_proj.weight", _H + "mlp.up_proj.weight"), GATE_UP),
    Rule(_L + "mlp.linear_fc2.weight", (_H + "mlp.down_proj.weight",)),
)

QWEN3_MOE_MLP = (
    Rule(_L + "mlp.router.weight", (_H + "mlp.gate.weight",)),
    Rule(_L + "mlp.experts.local_experts.{expert}.linear_fc1.weight",
         (_H + "mlp.experts.{expert}.gate_proj.weight", _H + "mlp.experts.{expert}.up_proj.weight"), GATE_UP),
    Rule(_L + "mlp.experts.local_experts.{expert}.linear_fc2.weight", (_H + "mlp.experts.{expert}.down_proj.weight",)),
)

# The LM head lives outside the `model.` prefix in HF.
QWEN3_HEAD = (Rule("output_layer.weight", ("lm_head.weight",), when="untied"),)

@dataclass(frozen=True)
class Architecture:
    name: str  # HF `architectures[0]`
    model_type: str  # HF `model_type`
    components: tuple
    moe: bool


ARCHITECTURES: dict[str, Architecture] = {
    "Qwen3ForCausalLM": Architecture(
        "Qwen3ForCausalLM", "qwen3",
        (Component("model.", "", QWEN3_COMMON + QWEN3_DENSE_MLP), Component("", "", QWEN3_HEAD)), moe=False),
    "Qwen3MoeForCausalLM": Architecture(
        "Qwen3MoeForCausalLM", "qwen3_moe",
        (Component("model.", "", QWEN3_COMMON + QWEN3_MOE_MLP), Component("", "", QWEN3_HEAD)), moe=True),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ConversionError(f"unsupported architecture {name!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None
