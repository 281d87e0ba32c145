"""HF <-> Megatron weight table of the Intern-S1-Pro vision tower (`model.visual.*` in the release).

The release's `attn.qkv` is one [3C, C] tensor (rows: q of all heads, then k, then v); Megatron's
column-parallel `linear_qkv` wants per-head [q_h; k_h; v_h] rows so that a TP slice is whole heads.
The merger (`model.visual.merger.*`) is the composite's `vision_projection`.
"""
from __future__ import annotations

from megatron_s1.conversion.mappings import Rule, Transform
from megatron_s1.models.vision.internvit import hf_qkv_to_megatron


class FusedQKVPerHead(Transform):
    """One [q(all heads); k; v] tensor (weight or bias) <-> per-head [q_h; k_h; v_h] rows."""
    name = "fused_qkv_per_head"

    def to_mcore(self, tensors, shapes):
        (tensor,) = tensors
        return hf_qkv_to_megatron(tensor, shapes.num_attention_heads, shapes.head_dim).contiguous()

    def to_hf(self, tensor, shapes):
        heads, d = shapes.num_attention_heads, shapes.head_dim
        rest = tensor.shape[1:]
        return [tensor.reshape(heads, 3, d, *rest).transpose(0, 1).reshape(3 * heads * d, *rest).contiguous()]


FUSED_QKV_PER_HEAD = FusedQKVPerHead()

_L, _B = "decoder.layers.{layer}.", "blocks.{layer}."


def _weight_bias(mcore: str, hf: str, transform: Transform = None) -> tuple:
    extra = () if transform is None else (transform,)
    return tuple(Rule(f"{mcore}.{kind}", (f"{hf}.{kind}",), *extra) for kind in ("weight", "bias"))


# Under `model.visual.` / `vision_model.`.
PRO_VISION_TOWER = (
    *_weight_bias("patch_embed", "patch_embed.proj"),
    Rule("pos_embed.weight", ("pos_embed.weight",)),
    *_weight_bias(_L + "input_layernorm", _B + "norm1"),
    *_weight_bias(_L + "self_attention.linear_qkv", _B + "attn.qkv", FUSED_QKV_PER_HEAD),
    *_weight_bias(_L + "self_attention.linear_proj", _B + "attn.proj"),
    *_weight_bias(_L + "pre_mlp_layernorm", _B + "norm2"),
    *_weight_bias(_L + "mlp.linear_fc1", _B + "mlp.linear_fc1"),
    *_weight_bias(_L + "mlp.linear_fc2", _B + "mlp.linear_fc2"),
)

# Under `model.visual.merger.` / `vision_projection.`.
PRO_PATCH_MERGER = (
    *_weight_bias("layernorm", "norm"),
    *_weight_bias("linear_fc1", "linear_fc1"),
    *_weight_bias("linear_fc2", "linear_fc2"),
)


# ------------------------------------------------------------------------- config.json vision_config
# vision_config key -> VisionConfig field (the rest of the tower's structure is fixed, checked below).
_CONFIG_KEYS = (("depth", "num_layers"), ("hidden_size", "hidden_size"), ("num_heads", "num_attention_heads"),
                ("intermediate_size", "ffn_hidden_size"), ("patch_size", "patch_size"),
                ("temporal_patch_size", "temporal_patch_size"), ("spatial_merge_size", "spatial_merge_size"),
                ("num_position_embeddings", "num_position_embeddings"))
_FIXED = (("hidden_act", "gelu_pytorch_tanh", "the ViT MLP uses tanh-approximated GELU"),
          ("in_channels", 3, "RGB input"))


def vision_fields_from_hf(vc: dict, lm_hidden: int) -> dict:
    """Release `vision_config` -> `vision.*` fields (vision.arch=pro)."""
    from megatron_s1.conversion.mappings import ConversionError
    from megatron_s1.models.presets import VISION_PRESETS

    for key, expected, why in _FIXED:
        if vc.get(key, expected) != expected:
            raise ConversionError(f"config.json vision_config.{key}={vc.get(key)!r} is not supported ({why})")
    if vc.get("out_hidden_size", lm_hidden) != lm_hidden:
        raise ConversionError(f"vision_config.out_hidden_size={vc['out_hidden_size']} differs from the text "
                              f"hidden_size={lm_hidden}; the merger must output the LLM hidden size")
    try:
        fields = {ours: int(vc[theirs]) for theirs, ours in _CONFIG_KEYS}
    except KeyError as err:
        raise ConversionError(f"config.json vision_config lacks {err.args[0]!r}, required for the Pro tower") from None
    fields.update(arch="pro", normalization="LayerNorm", norm_epsilon=1e-6, qk_layernorm=False, add_qkv_bias=True)
    fields["preset"] = next((name for name, values in VISION_PRESETS.items() if values.get("arch") == "pro" and
                             all(values.get(k) == v for k, v in fields.items() if k in values)), "intern-s1-pro-vit")
    return fields


def vision_config_to_hf(fields: dict, base: dict, lm_hidden: int) -> dict:
    """`vision.*` fields -> release `vision_config`, keeping every other key of `base` (the original)."""
    vc = dict(base)
    want = {theirs: fields[ours] for theirs, ours in _CONFIG_KEYS}
    want.update(out_hidden_size=lm_hidden, hidden_act="gelu_pytorch_tanh", in_channels=3)
    if not base:
        vc["model_type"] = "interns1_pro_vision"
    for key, value in want.items():
        if vc.get(key) != value:
            vc[key] = value
    return vc
