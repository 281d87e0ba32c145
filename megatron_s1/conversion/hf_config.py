"""HF config.json <-> our `model.*` config fields, per architecture.

Everything that changes the computation is either mapped or rejected with one error line: a converted
checkpoint either reproduces the HF model exactly or is not written.
"""
from __future__ import annotations

from typing import Optional

from megatron_s1.conversion.mappings import ConversionError, get_architecture


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters")
    if isinstance(params, dict):  # transformers >= 5
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ConversionError(f"rope_parameters.rope_type={rope_type!r} (RoPE scaling) is not supported; "
                                  "only the default RoPE of Qwen3 maps to Megatron")
        if "rope_theta" in params:
            return params["rope_theta"]
    scaling = hf.get("rope_scaling")
    if scaling:
        raise ConversionError(f"rope_scaling={scaling!r} is not supported; only the default RoPE maps to Megatron")
    return hf.get("rope_theta", 10000.0)


def _require(hf: dict, key: str, expected, why: str) -> None:
    value = hf.get(key, expected)
    if value != expected and not (value is None and expected in (False, [], None)):
        raise ConversionError(f"config.json {key}={value!r} is not supported ({why})")


def hf_to_model_fields(hf: dict) -> tuple:
    """(architecture name, dict of ModelConfig fields) for an HF config.json."""
    archs = hf.get("architectures") or []
    if len(archs) != 1:
        raise ConversionError(f"config.json architectures={archs!r}; expected exactly one architecture")
    arch = get_architecture(archs[0])
    if hf.get("model_type") not in (None, arch.model_type):
        raise ConversionError(f"config.json model_type={hf.get('model_type')!r} does not match architecture "
                              f"{arch.name} (expected {arch.model_type!r})")
    _require(hf, "hidden_act", "silu", "Megatron side uses SwiGLU")
    _require(hf, "attention_bias", False, "q/k/v/o biases are not mapped")
    _require(hf, "use_sliding_window", False, "sliding-window attention is not mapped")
    theta = float(_rope_theta(hf))
    if theta != int(theta):
        raise ConversionError(f"rope theta {theta} is not an integer; model.rotary_base is an integer field")
    try:
        heads = hf["num_attention_heads"]
        fields = dict(
            num_layers=hf["num_hidden_layers"],
            hidden_size=hf["hidden_size"],
            num_attention_heads=heads,
            num_query_groups=hf.get("num_key_value_heads") or heads,
            kv_channels=hf.get("head_dim") or hf["hidden_size"] // heads,
            ffn_hidden_size=hf["intermediate_size"],
            vocab_size=hf["vocab_size"],
            max_position_embeddings=hf["max_position_embeddings"],
            normalization="RMSNorm",
            norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
            qk_layernorm=True,
            rotary_base=int(theta),
            untie_embeddings_and_output_weights=not hf.get("tie_word_embeddings", False),
            add_qkv_bias=False,
            activation="swiglu",
            init_method_std=float(hf.get("initializer_range", 0.02)),
            num_moe_experts=None,
        )
        if arch.moe:
            _require(hf, "mlp_only_layers", [], "every layer must be an MoE layer")
            _require(hf, "decoder_sparse_step", 1, "every layer must be an MoE layer")
            fields.update(
                num_moe_experts=hf.get("num_experts", hf.get("num_local_experts")),
                moe_router_topk=hf["num_experts_per_tok"],
                moe_ffn_hidden_size=hf["moe_intermediate_size"],
                moe_norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
                moe_aux_loss_coeff=float(hf.get("router_aux_loss_coef", 0.001)),
                moe_shared_expert_intermediate_size=None,
            )
            if fields["num_moe_experts"] is None:
                raise KeyError("num_experts")
    except KeyError as err:
        raise ConversionError(f"config.json lacks {err.args[0]!r}, required for {arch.name}") from None
    if fields["num_attention_heads"] % fields["num_query_groups"]:
        raise ConversionError("config.json num_key_value_heads must divide num_attention_heads")
    return arch.name, fields


def model_fields_to_hf(arch_name: str, model: dict, base: Optional[dict], dtype_name: Optional[str]) -> dict:
    """config.json for `model` fields; `base` (the original HF config, if known) keeps every other HF field."""
    arch = get_architecture(arch_name)
    if base is None:
        base = _default_hf_config(arch_name)
    hf = dict(base)
    heads = model["num_attention_heads"]
    wanted = dict(
        architectures=[arch.name], model_type=arch.model_type,
        num_hidden_layers=model["num_layers"], hidden_size=model["hidden_size"], num_attention_heads=heads,
        num_key_value_heads=model["num_query_groups"], head_dim=model["kv_channels"],
        intermediate_size=model["ffn_hidden_size"], vocab_size=model["vocab_size"],
        max_position_embeddings=model["max_position_embeddings"], rms_norm_eps=model["norm_epsilon"],
        tie_word_embeddings=not model["untie_embeddings_and_output_weights"],
        initializer_range=model["init_method_std"],
    )
    if arch.moe:
        experts_key = "num_experts" if "num_experts" in hf or "num_local_experts" not in hf else "num_local_experts"
        wanted.update({experts_key: model["num_moe_experts"], "num_experts_per_tok": model["moe_router_topk"],
                       "moe_intermediate_size": model["moe_ffn_hidden_size"] or model["ffn_hidden_size"],
                       "norm_topk_prob": model["moe_norm_topk_prob"],
                       "router_aux_loss_coef": model["moe_aux_loss_coeff"]})
    for key, value in wanted.items():
        if hf.get(key) != value:  # keep the original spelling (e.g. 1e-06 vs 1e-6) when equal
            hf[key] = value
    if isinstance(hf.get("rope_parameters"), dict):
        if hf["rope_parameters"].get("rope_theta") != model["rotary_base"]:
            hf["rope_parameters"] = dict(hf["rope_parameters"], rope_theta=float(model["rotary_base"]))
    elif hf.get("rope_theta") != model["rotary_base"]:
        hf["rope_theta"] = float(model["rotary_base"])
    if dtype_name is not None:
        key = "dtype" if "dtype" in hf or "torch_dtype" not in hf else "torch_dtype"
        if hf.get(key) != dtype_name:
            hf[key] = dtype_name
    return hf


def _default_hf_config(arch_name: str) -> dict:
    """A complete config.json for the architecture from transformers' own defaults."""
    import transformers

    cls = {"Qwen3ForCausalLM": "Qwen3Config", "Qwen3MoeForCausalLM": "Qwen3MoeConfig"}[arch_name]
    cfg = getattr(transformers, cls)().to_dict()
    cfg.pop("transformers_version", None)
    return cfg
