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
    padded_heads: Optional[int] = None  # vision tower: heads zero-padded to a TP multiple on the Megatron side

    @property
    def heads_out(self) -> int:
        return self.padded_heads or self.num_attention_heads


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


class PerHeadQKV(Transform):
    """InternViT: q_proj, k_proj, v_proj (weights or biases) -> linear_qkv rows [q_h; k_h; v_h] per head, then
    zero heads appended up to `padded_heads` (a TP multiple; padded heads are masked in the model). Export drops
    the padded heads."""
    name = "per_head_qkv"

    def to_mcore(self, tensors, shapes):
        heads, d = shapes.num_attention_heads, shapes.head_dim
        trailing = tensors[0].shape[1:]
        parts = [t.reshape(heads, d, *trailing) for t in tensors]
        fused = torch.cat(parts, dim=1)  # [heads, 3d, ...]
        pad = shapes.heads_out - heads
        if pad:
            fused = torch.cat([fused, fused.new_zeros(pad, 3 * d, *trailing)])
        return fused.reshape(shapes.heads_out * 3 * d, *trailing).contiguous()

    def to_hf(self, tensor, shapes):
        heads, d = shapes.num_attention_heads, shapes.head_dim
        trailing = tensor.shape[1:]
        fused = tensor.reshape(shapes.heads_out, 3 * d, *trailing)[:heads]
        return [t.reshape(heads * d, *trailing).contiguous() for t in torch.split(fused, d, dim=1)]

    def mcore_shape(self, hf_shapes, shapes):
        q = hf_shapes[0]
        return (3 * shapes.heads_out * shapes.head_dim, *q[1:])


class PadHeads(Transform):
    """A per-head axis (`dim`) padded from `heads * head_dim` to `padded_heads * head_dim` with `fill`: the
    ViT QK-norm weights (dim 0, ones) and the attention output projection's input columns (dim 1, zeros)."""
    name = "pad_heads"

    def __init__(self, dim: int, fill: float):
        self.dim, self.fill = dim, fill

    def to_mcore(self, tensors, shapes):
        (tensor,) = tensors
        pad = (shapes.heads_out - shapes.num_attention_heads) * shapes.head_dim
        if not pad:
            return tensor
        shape = list(tensor.shape)
        shape[self.dim] = pad
        return torch.cat([tensor, tensor.new_full(shape, self.fill)], dim=self.dim)

    def to_hf(self, tensor, shapes):
        real = shapes.num_attention_heads * shapes.head_dim
        return [tensor.narrow(self.dim, 0, real).contiguous()]

    def mcore_shape(self, hf_shapes, shapes):
        (shape,) = hf_shapes
        out = list(shape)
        out[self.dim] = shapes.heads_out * shapes.head_dim
        return tuple(out)


class Replicate(Transform):
    """One HF tensor copied into several Megatron parameters (Intern-S1-Pro: the global FoPE coefficients go
    into every layer). Export takes the copy of the first rule that lists the HF name (layer 0)."""
    name = "replicate"


IDENTITY = Transform()
FUSED_QKV = FusedQKV()
GATE_UP = Concat(2)
PER_HEAD_QKV = PerHeadQKV()
PAD_HEADS_ROWS_ONES = PadHeads(0, 1.0)
PAD_HEADS_COLS_ZEROS = PadHeads(1, 0.0)
REPLICATE = Replicate()


# ------------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    mcore: str  # Megatron parameter name pattern (local spec, no TP split)
    hf: tuple  # HF tensor name pattern(s)
    transform: Transform = IDENTITY
    when: Optional[str] = None  # only for models with this flag: "untied", "qk_norm", "moe", "dense", "vit_*"


@dataclass(frozen=True)
class Component:
    """One table mounted under an HF prefix and a Megatron prefix. `part` names the sub-model whose layer
    count and head shapes the table uses ("text" or "vision")."""
    hf_prefix: str
    mcore_prefix: str
    rules: tuple
    part: str = "text"


@dataclass(frozen=True)
class ConcreteRule:
    mcore: str
    hf: tuple
    transform: Transform
    layer: Optional[int]  # for per-layer streaming / grouping
    part: str = "text"  # which `Shapes` the transform uses


def _fill(pattern: str, layer: Optional[int], expert: Optional[int]) -> str:
    out = pattern
    if layer is not None:
        out = out.replace("{layer}", str(layer))
    if expert is not None:
        out = out.replace("{expert}", str(expert))
    return out


def expand(components: Sequence[Component], num_layers, num_experts: Optional[int],
           flags: set) -> list[ConcreteRule]:
    """Instantiate the tables for a model with `num_layers` layers (an int, or a dict part -> layers) and
    `num_experts` experts (None = dense)."""
    out = []
    for comp in components:
        n_layers = num_layers[comp.part] if isinstance(num_layers, dict) else num_layers
        for rule in comp.rules:
            if rule.when is not None and rule.when not in flags:
                continue
            layers = range(n_layers) if "{layer}" in rule.mcore else [None]
            experts = range(num_experts or 0) if "{expert}" in rule.mcore else [None]
            for layer in layers:
                for expert in experts:
                    out.append(ConcreteRule(
                        mcore=comp.mcore_prefix + _fill(rule.mcore, layer, expert),
                        hf=tuple(comp.hf_prefix + _fill(h, layer, expert) for h in rule.hf),
                        transform=rule.transform, layer=layer, part=comp.part))
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

# Intern-S1-Pro text backbone: Qwen3-MoE plus FoPE coefficients. HF keeps one global copy
# (`rotary_emb.{cos,sin}_coef` of the language model); Megatron has one per layer.
PRO_FOPE = (
    Rule(_L + "self_attention.fope.cos_coef", ("rotary_emb.cos_coef",), REPLICATE, when="fope"),
    Rule(_L + "self_attention.fope.sin_coef", ("rotary_emb.sin_coef",), REPLICATE, when="fope"),
)


def _only(rules: tuple, flag: str) -> tuple:
    return tuple(Rule(r.mcore, r.hf, r.transform, when=flag) for r in rules)


# InternViT as in the Intern-S1 / InternVL (transformers-native) checkpoints, under `model.vision_tower.`.
_V = "encoder.layer.{layer}."
INTERNVIT = (
    Rule("embeddings.class_embedding", ("embeddings.cls_token",)),
    Rule("embeddings.patch_embedding.weight", ("embeddings.patch_embeddings.projection.weight",)),
    Rule("embeddings.patch_embedding.bias", ("embeddings.patch_embeddings.projection.bias",)),
    Rule("embeddings.position_embedding", ("embeddings.position_embeddings",)),
    Rule(_L + "input_layernorm.weight", (_V + "layernorm_before.weight",)),
    Rule(_L + "input_layernorm.bias", (_V + "layernorm_before.bias",), when="vit_norm_bias"),
    Rule(_L + "self_attention.linear_qkv.weight",
         (_V + "attention.q_proj.weight", _V + "attention.k_proj.weight", _V + "attention.v_proj.weight"),
         PER_HEAD_QKV),
    Rule(_L + "self_attention.linear_qkv.bias",
         (_V + "attention.q_proj.bias", _V + "attention.k_proj.bias", _V + "attention.v_proj.bias"),
         PER_HEAD_QKV, when="vit_qkv_bias"),
    Rule(_L + "self_attention.q_layernorm.weight", (_V + "attention.q_norm.weight",), PAD_HEADS_ROWS_ONES,
         when="vit_qk_norm"),
    Rule(_L + "self_attention.k_layernorm.weight", (_V + "attention.k_norm.weight",), PAD_HEADS_ROWS_ONES,
         when="vit_qk_norm"),
    Rule(_L + "self_attention.linear_proj.weight", (_V + "attention.projection_layer.weight",), PAD_HEADS_COLS_ZEROS),
    Rule(_L + "self_attention.linear_proj.bias", (_V + "attention.projection_layer.bias",)),
    Rule(_L + "pre_mlp_layernorm.weight", (_V + "layernorm_after.weight",)),
    Rule(_L + "pre_mlp_layernorm.bias", (_V + "layernorm_after.bias",), when="vit_norm_bias"),
    Rule(_L + "mlp.linear_fc1.weight", (_V + "mlp.fc1.weight",)),
    Rule(_L + "mlp.linear_fc1.bias", (_V + "mlp.fc1.bias",)),
    Rule(_L + "mlp.linear_fc2.weight", (_V + "mlp.fc2.weight",)),
    Rule(_L + "mlp.linear_fc2.bias", (_V + "mlp.fc2.bias",)),
    Rule(_L + "ls1", (_V + "lambda_1",)),
    Rule(_L + "ls2", (_V + "lambda_2",)),
)

# InternVL MLP projector (pixel-shuffled ViT features -> LLM hidden), under `model.multi_modal_projector.`.
INTERNVL_PROJECTOR = (
    Rule("layernorm.weight", ("layer_norm.weight",)),
    Rule("layernorm.bias", ("layer_norm.bias",)),
    Rule("linear_fc1.weight", ("linear_1.weight",)),
    Rule("linear_fc1.bias", ("linear_1.bias",)),
    Rule("linear_fc2.weight", ("linear_2.weight",)),
    Rule("linear_fc2.bias", ("linear_2.bias",)),
)

# The Pro vision tables live next to the tower; imported here, after Rule / Transform exist, because that
# module builds its rules from them.
from megatron_s1.models.pro.vision.mapping import PRO_PATCH_MERGER, PRO_VISION_TOWER  # noqa: E402


@dataclass(frozen=True)
class Architecture:
    name: str  # HF `architectures[0]`
    model_type: str  # HF `model_type`
    components: tuple
    moe: Optional[bool]  # None: decided by the text config (InternS1: dense mini / MoE)
    multimodal: bool = False
    # Tables used instead of `components` when the checkpoint has a vision tower (config.json vision_config)
    # while `components` describe its text backbone alone (Intern-S1-Pro).
    multimodal_components: tuple = ()

    def components_for(self, multimodal: bool) -> tuple:
        return self.multimodal_components if (multimodal and self.multimodal_components) else self.components


ARCHITECTURES: dict[str, Architecture] = {
    "Qwen3ForCausalLM": Architecture(
        "Qwen3ForCausalLM", "qwen3",
        (Component("model.", "", QWEN3_COMMON + QWEN3_DENSE_MLP), Component("", "", QWEN3_HEAD)), moe=False),
    "Qwen3MoeForCausalLM": Architecture(
        "Qwen3MoeForCausalLM", "qwen3_moe",
        (Component("model.", "", QWEN3_COMMON + QWEN3_MOE_MLP), Component("", "", QWEN3_HEAD)), moe=True),
    # Intern-S1 (Qwen3-MoE + InternViT-6B) and Intern-S1-mini (Qwen3 dense + InternViT-300M).
    "InternS1ForConditionalGeneration": Architecture(
        "InternS1ForConditionalGeneration", "interns1",
        (Component("model.language_model.", "language_model.",
                   QWEN3_COMMON + _only(QWEN3_DENSE_MLP, "dense") + _only(QWEN3_MOE_MLP, "moe")),
         Component("", "language_model.", QWEN3_HEAD),
         Component("model.vision_tower.", "vision_model.", INTERNVIT, part="vision"),
         Component("model.multi_modal_projector.", "vision_projection.", INTERNVL_PROJECTOR, part="vision")),
        moe=None, multimodal=True),
    # Intern-S1-Pro: text backbone (Qwen3-MoE + grouped router + FoPE) alone -> the plain language model; with
    # its vision tower (`model.visual.*`, Qwen3-VL style ViT + merger) -> InternS1Model with vision.arch=pro.
    "InternS1ProForConditionalGeneration": Architecture(
        "InternS1ProForConditionalGeneration", "interns1_pro",
        (Component("model.language_model.", "", QWEN3_COMMON + QWEN3_MOE_MLP + PRO_FOPE),
         Component("", "", QWEN3_HEAD)), moe=True,
        multimodal_components=(
            Component("model.language_model.", "language_model.", QWEN3_COMMON + QWEN3_MOE_MLP + PRO_FOPE),
            Component("", "language_model.", QWEN3_HEAD),
            Component("model.visual.", "vision_model.", PRO_VISION_TOWER, part="vision"),
            Component("model.visual.merger.", "vision_projection.", PRO_PATCH_MERGER, part="vision"))),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ConversionError(f"unsupported architecture {name!r}; supported: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> Optional[int]:
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None
