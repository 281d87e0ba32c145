"""HF config.json <-> our `model.*` config fields, per architecture.

Everything that changes the computation is either mapped or rejected with one error line: a converted
checkpoint either reproduces the HF model exactly or is not written.
"""
from __future__ import annotations

from typing import Optional

from megatron_s1.conversion.mappings import ConversionError, get_architecture


def _rope_theta(hf: dict) -> float:
    """The RoPE base of a text config, read as transformers reads it (`convert_rope_params_to_dict` and
    `standardize_rope_params` of transformers' PreTrainedConfig): a non-empty `rope_scaling` replaces
    `rope_parameters` whole; `rope_type` (legacy spelling `type`) defaults to "default"; `rope_theta` comes from
    that dict, else the top-level key, else 10000. Our models implement plain RoPE only, so any other rope_type
    (yarn, linear, dynamic, llama3, longrope, ...) is refused: converting it as plain RoPE would be a wrong model."""
    field = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    params = hf.get(field) or {}
    if not isinstance(params, dict):
        raise ConversionError(f"config.json {field}={params!r} is not a mapping; expected e.g. "
                              '{"rope_type": "default", "rope_theta": 1000000.0}')
    if "full_attention" in params:  # nested per layer type; every layer is full attention (no sliding window)
        field, params = f"{field}.full_attention", params["full_attention"] or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConversionError(
            f"config.json {field} has rope_type={rope_type!r} (RoPE scaling), which transformers applies but "
            "megatron-s1 models do not implement (plain RoPE only), so the converted model would compute different "
            f"attention; remove {field} from config.json (or set its rope_type to \"default\") to convert with "
            "plain RoPE, if the weights were trained so (Qwen3 releases add YaRN only to extend the context)")
    return params.get("rope_theta", hf.get("rope_theta", 10000.0))


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


# ------------------------------------------------------------------------- multimodal / Pro (sections)
_NORMS = {"rms_norm": "RMSNorm", "layer_norm": "LayerNorm"}
_TEXT_ARCH = {"qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}
# Defaults hf_to_model_fields assumes for absent text_config keys.
_TEXT_READ_DEFAULTS = dict(router_aux_loss_coef=0.001, norm_topk_prob=False, rms_norm_eps=1e-6,
                           initializer_range=0.02, tie_word_embeddings=False)


def _square(value, key: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(f"vision_config.{key}={value!r}: only square images/patches are supported")
        value = value[0]
    return int(value)


def _pro_text_fields(text: dict) -> dict:
    """Intern-S1-Pro text config (Qwen3-MoE + grouped router + FoPE) -> ModelConfig fields."""
    text = dict(text)
    scaling = dict(text.get("rope_scaling") or {})
    fope = {k: scaling.pop(k) for k in ("fope_init_factor", "fope_sep_head", "num_inv_freq") if k in scaling}
    text["rope_scaling"] = scaling  # the FoPE keys are mapped below; the rest is read as for Qwen3
    text["architectures"], text["model_type"] = ["Qwen3MoeForCausalLM"], "qwen3_moe"
    _, fields = hf_to_model_fields(text)
    groups = text.get("router_n_groups")
    fields["moe_router_groups"] = int(groups) if groups and int(groups) > 1 else None
    if fope:
        fields.update(position_embedding_type="fope", fope_init_factor=float(fope.get("fope_init_factor", 0.5)),
                      fope_sep_head=bool(fope.get("fope_sep_head", True)), fope_num_inv_freq=fope.get("num_inv_freq"))
    else:
        fields["position_embedding_type"] = "rope"
    return fields


def hf_to_sections(hf: dict) -> tuple:
    """(architecture name, {config section: fields}) for any supported HF config.json.

    Text-only architectures give {"model": ...}; InternS1 adds "vision" (InternViT + projector), "train"
    (task mm_pretrain) and "timeseries" (none: the released Intern-S1 has no time-series encoder weights).
    """
    archs = hf.get("architectures") or []
    if len(archs) != 1:
        raise ConversionError(f"config.json architectures={archs!r}; expected exactly one architecture")
    arch = get_architecture(archs[0])
    if arch.name == "InternS1ProForConditionalGeneration":
        if hf.get("model_type") not in (None, arch.model_type):
            raise ConversionError(f"config.json model_type={hf.get('model_type')!r} is not {arch.model_type!r}")
        sections = {"model": _pro_text_fields(hf["text_config"])}
        if hf.get("vision_config"):  # the composite with its tower (models/pro/vision)
            from megatron_s1.models.pro.vision.mapping import vision_fields_from_hf

            sections.update(vision=vision_fields_from_hf(hf["vision_config"], sections["model"]["hidden_size"]),
                            timeseries={"preset": None}, train={"task": "mm_pretrain"})
        return arch.name, sections
    if not arch.multimodal:
        name, model = hf_to_model_fields(hf)
        return name, {"model": model}
    if hf.get("model_type") not in (None, arch.model_type):
        raise ConversionError(f"config.json model_type={hf.get('model_type')!r} does not match architecture "
                              f"{arch.name} (expected {arch.model_type!r})")
    text = dict(hf.get("text_config") or {})
    text_arch = _TEXT_ARCH.get(text.get("model_type"))
    if text_arch is None:
        raise ConversionError(f"text_config.model_type={text.get('model_type')!r} is not supported; "
                              f"supported: {', '.join(sorted(_TEXT_ARCH))}")
    if "tie_word_embeddings" in hf and "tie_word_embeddings" in text and \
            bool(hf["tie_word_embeddings"]) != bool(text["tie_word_embeddings"]):
        raise ConversionError("config.json tie_word_embeddings differs between the top level and text_config")
    text.setdefault("tie_word_embeddings", hf.get("tie_word_embeddings", False))
    text.pop("model_type")
    text["architectures"] = [text_arch]
    _, model = hf_to_model_fields(text)

    vc = hf.get("vision_config") or {}
    for key, expected, why in (
            ("vision_feature_layer", -1, "features are taken from the last ViT layer"),
            ("vision_feature_select_strategy", "default", "the CLS token is dropped"),
            ("projector_hidden_act", "gelu", "the projector uses exact GELU")):
        _require(hf, key, expected, why)
    for key, expected, why in (
            ("hidden_act", "gelu", "the ViT MLP uses exact GELU"),
            ("use_mean_pooling", True, "no final ViT layernorm is mapped"),
            ("use_absolute_position_embeddings", True, "absolute position embeddings are mapped"),
            ("use_mask_token", False, "no mask token is mapped"),
            ("num_channels", 3, "RGB input")):
        if vc.get(key, expected) != expected:
            raise ConversionError(f"config.json vision_config.{key}={vc.get(key)!r} is not supported ({why})")
    norm = _NORMS.get(vc.get("norm_type", "rms_norm"))
    if norm is None:
        raise ConversionError(f"vision_config.norm_type={vc.get('norm_type')!r}; expected rms_norm or layer_norm")
    eps = float(vc.get("layer_norm_eps", 1e-6))
    if vc.get("use_qk_norm") and eps != 1e-6:
        raise ConversionError(f"vision_config.layer_norm_eps={eps}: with use_qk_norm the HF QK-norm eps is fixed "
                              "at 1e-6 while ours uses layer_norm_eps; only 1e-6 maps exactly")
    try:
        vision = dict(
            num_layers=vc["num_hidden_layers"], hidden_size=vc["hidden_size"],
            num_attention_heads=vc["num_attention_heads"], ffn_hidden_size=vc["intermediate_size"],
            normalization=norm, norm_epsilon=eps, qk_layernorm=bool(vc.get("use_qk_norm", False)),
            add_qkv_bias=bool(vc.get("attention_bias", False)),
            image_size=_square(vc.get("image_size", 448), "image_size"),
            patch_size=_square(vc.get("patch_size", 14), "patch_size"),
            layer_scale_init=float(vc.get("layer_scale_init_value", 0.1)),
            drop_path_rate=float(vc.get("drop_path_rate", 0.0)),
            downsample_ratio=float(hf.get("downsample_ratio", 0.5)),
        )
    except KeyError as err:
        raise ConversionError(f"config.json vision_config lacks {err.args[0]!r}, required for {arch.name}") from None
    vision["preset"] = _vision_preset_name(vision)
    return arch.name, {"model": model, "vision": vision, "timeseries": {"preset": None},
                       "train": {"task": "mm_pretrain"}}


def _vision_preset_name(vision: dict) -> str:
    """A preset name turns the tower on; every field is explicit, so the name is informational only."""
    from megatron_s1.models.presets import VISION_PRESETS

    for name, values in VISION_PRESETS.items():
        if all(vision.get(k) == v for k, v in values.items()):
            return name
    return "internvit-6b" if vision["normalization"] == "RMSNorm" else "internvit-300m"


def sections_to_hf(arch_name: str, sections: dict, base: Optional[dict], dtype_name: Optional[str],
                   cast: bool = False) -> dict:
    """config.json for the config sections (`model`, `vision`); `base` keeps every other HF field."""
    arch = get_architecture(arch_name)
    model = sections["model"]
    if not arch.multimodal and arch.name != "InternS1ProForConditionalGeneration":
        return model_fields_to_hf(arch_name, model, base, dtype_name)
    fresh = base is None
    if fresh:
        base = _default_composite_config(arch_name, moe=bool(model.get("num_moe_experts")))
    hf = dict(base)
    text_base = dict(base.get("text_config") or {})
    text_arch = "Qwen3MoeForCausalLM" if model.get("num_moe_experts") else "Qwen3ForCausalLM"
    text = model_fields_to_hf(text_arch, model, text_base, None)
    for key, default in _TEXT_READ_DEFAULTS.items():  # absent = the default it was read as: keep absent
        if key not in text_base and text.get(key) == default:
            text.pop(key, None)
    for key in ("architectures", "model_type"):  # keep the text_config's own spelling of these
        if key in text_base:
            text[key] = text_base[key]
        else:
            text.pop(key, None)
    if arch.name == "InternS1ProForConditionalGeneration":
        groups = model.get("moe_router_groups") or 1
        if text.get("router_n_groups", 1) != groups:
            text["router_n_groups"] = groups
        if model.get("position_embedding_type") == "fope":
            scaling = dict(text.get("rope_scaling") or {"rope_type": "default"})
            want = {"fope_init_factor": model["fope_init_factor"], "fope_sep_head": model["fope_sep_head"],
                    "num_inv_freq": model["fope_num_inv_freq"]}
            if any(scaling.get(k) != v for k, v in want.items()):
                text["rope_scaling"] = dict(scaling, **want)
    if text != text_base:
        hf["text_config"] = text
    if "tie_word_embeddings" in hf and hf["tie_word_embeddings"] != text.get("tie_word_embeddings",
                                                                              hf["tie_word_embeddings"]):
        hf["tie_word_embeddings"] = text["tie_word_embeddings"]
    pro_vision = (sections.get("vision") or {}).get("preset") is not None and sections["vision"]["arch"] == "pro"
    if arch.name == "InternS1ProForConditionalGeneration" and pro_vision:
        from megatron_s1.models.pro.vision.mapping import vision_config_to_hf

        vc = vision_config_to_hf(sections["vision"], base.get("vision_config") or {}, model["hidden_size"])
        if vc != base.get("vision_config"):
            hf["vision_config"] = vc
    if arch.multimodal:
        v = sections["vision"]
        vc = dict(base.get("vision_config") or {})
        old = dict(vc)
        inv_norm = {b: a for a, b in _NORMS.items()}
        want = dict(num_hidden_layers=v["num_layers"], hidden_size=v["hidden_size"],
                    num_attention_heads=v["num_attention_heads"], intermediate_size=v["ffn_hidden_size"],
                    norm_type=inv_norm[v["normalization"]], layer_norm_eps=v["norm_epsilon"],
                    use_qk_norm=v["qk_layernorm"], attention_bias=v["add_qkv_bias"],
                    layer_scale_init_value=v["layer_scale_init"], drop_path_rate=v["drop_path_rate"])
        defaults = dict(norm_type="rms_norm", layer_norm_eps=1e-6, use_qk_norm=False, attention_bias=False,
                        layer_scale_init_value=0.1, drop_path_rate=0.0)  # as read by hf_to_sections
        for key, value in want.items():
            if vc.get(key, defaults.get(key)) != value:
                vc[key] = value
        for key in ("image_size", "patch_size"):
            if _square(vc.get(key, 0) or 0, key) != v[key]:
                vc[key] = [v[key], v[key]]
        if vc != old:
            hf["vision_config"] = vc
        if hf.get("downsample_ratio") != v["downsample_ratio"]:
            hf["downsample_ratio"] = v["downsample_ratio"]
    key = "dtype" if "dtype" in hf or "torch_dtype" not in hf else "torch_dtype"
    # An original config without a dtype (null) keeps it so unless the export casts (`dtype_name` given then).
    if dtype_name is not None and (fresh or hf.get(key) is not None or cast) and hf.get(key) != dtype_name:
        hf[key] = dtype_name
    return hf


def _default_composite_config(arch_name: str, moe: bool) -> dict:
    """config.json skeleton of a composite model trained here from scratch (no original HF config)."""
    import transformers

    text = getattr(transformers, "Qwen3MoeConfig" if moe else "Qwen3Config")().to_dict()
    text.pop("transformers_version", None)
    if arch_name == "InternS1ProForConditionalGeneration":
        text["model_type"] = "interns1_pro_text"
        return {"architectures": [arch_name], "model_type": "interns1_pro", "text_config": text,
                "tie_word_embeddings": False}
    vision = transformers.InternVLVisionConfig().to_dict()
    vision.pop("transformers_version", None)
    vision["model_type"] = "interns1_vision"
    return {"architectures": [arch_name], "model_type": "interns1", "text_config": text, "vision_config": vision,
            "downsample_ratio": 0.5, "projector_hidden_act": "gelu", "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default", "tie_word_embeddings": False}
