"""The `intern-s1-pro` preset equals the release's config.json (../shared/reference/intern-s1-pro), the source
of truth for the architecture, field by field; and the Pro recipes use it unchanged."""
import glob
import json
import os

import pytest

from megatron_s1.config import load_config
from tests.conftest import REPO, reference_path

# release text_config key -> model.* field, read independently of the converter's mapping
TEXT_FIELDS = {
    "num_hidden_layers": "num_layers", "hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups", "head_dim": "kv_channels", "intermediate_size": "ffn_hidden_size",
    "moe_intermediate_size": "moe_ffn_hidden_size", "num_experts": "num_moe_experts",
    "num_experts_per_tok": "moe_router_topk", "norm_topk_prob": "moe_norm_topk_prob",
    "router_n_groups": "moe_router_groups", "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings", "rms_norm_eps": "norm_epsilon",
    "rope_theta": "rotary_base", "initializer_range": "init_method_std",
}
FOPE_FIELDS = {"fope_init_factor": "fope_init_factor", "fope_sep_head": "fope_sep_head",
               "num_inv_freq": "fope_num_inv_freq"}


@pytest.fixture(scope="module")
def release():
    with open(reference_path("intern-s1-pro", "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def preset():
    return load_config(None, ["model.preset=intern-s1-pro"]).model


def test_text_fields_equal_the_release(release, preset):
    text = release["text_config"]
    diffs = {field: (text[key], getattr(preset, field)) for key, field in TEXT_FIELDS.items()
             if text[key] != getattr(preset, field)}
    scaling = text["rope_scaling"]
    diffs.update({field: (scaling[key], getattr(preset, field)) for key, field in FOPE_FIELDS.items()
                  if scaling[key] != getattr(preset, field)})
    assert not diffs, diffs  # {field: (release, preset)}
    assert scaling["rope_type"] == "default" and preset.position_embedding_type == "fope"
    # Architecture choices the release states without a number: SwiGLU (silu), no attention bias, QK-norm
    # (q_norm / k_norm modules), RMSNorm, untied LM head, every layer MoE, no shared expert.
    assert text["hidden_act"] == "silu" and preset.activation == "swiglu"
    assert text["attention_bias"] is False and preset.add_qkv_bias is False
    modules = release["quantization_config"]["modules_to_not_convert"]
    assert "model.language_model.layers.0.self_attn.q_norm" in modules and preset.qk_layernorm
    assert preset.normalization == "RMSNorm"
    assert release["tie_word_embeddings"] is False and preset.untie_embeddings_and_output_weights
    assert text["mlp_only_layers"] == [] and text["decoder_sparse_step"] == 1
    assert not preset.moe_shared_expert_intermediate_size


def test_converter_reads_the_release_as_the_preset(release, preset):
    """Every model field hf-to-mcore derives from the release's config.json equals the preset's, so a converted
    release checkpoint trains under `model.preset=intern-s1-pro` unchanged."""
    from megatron_s1.conversion.hf_config import hf_to_sections

    _, sections = hf_to_sections(release)
    diffs = {k: (v, getattr(preset, k)) for k, v in sections["model"].items() if getattr(preset, k) != v}
    assert not diffs, diffs


def test_pro_recipes_keep_the_release_architecture(preset):
    """Recipes may change training options, not the released architecture."""
    architecture = set(TEXT_FIELDS.values()) | set(FOPE_FIELDS.values()) | {
        "activation", "add_qkv_bias", "qk_layernorm", "normalization", "untie_embeddings_and_output_weights",
        "position_embedding_type", "moe_shared_expert_intermediate_size"}
    recipes = sorted(glob.glob(os.path.join(REPO, "examples", "*", "intern_s1_pro*.yaml")))
    assert recipes
    for path in recipes:
        model = load_config(path, []).model
        assert model.preset == "intern-s1-pro", path
        changed = {f: getattr(model, f) for f in architecture if getattr(model, f) != getattr(preset, f)}
        assert not changed, (path, changed)


def test_pro_recipes_use_the_released_vision_tower(release):
    """mm CPT, SFT and RL recipes of Intern-S1-Pro: vision.arch=pro with the release's vision_config and
    pixel bounds (the converted release checkpoint holds the tower, so every stage builds it)."""
    from megatron_s1.models.pro.vision.mapping import vision_fields_from_hf

    want = vision_fields_from_hf(release["vision_config"], release["text_config"]["hidden_size"])
    with open(reference_path("intern-s1-pro", "preprocessor_config.json")) as f:
        size = json.load(f)["size"]
    paths = glob.glob(os.path.join(REPO, "examples", "*", "intern_s1_pro*.yaml"))
    recipes = {os.path.relpath(p, REPO): p for p in paths}
    assert {"examples/mm_cpt/intern_s1_pro.yaml", "examples/sft/intern_s1_pro.yaml",
            "examples/rl/intern_s1_pro.yaml"} <= set(recipes)
    for name, path in recipes.items():
        cfg = load_config(path, [])
        vision = cfg.vision
        assert vision.arch == "pro" and vision.preset == "intern-s1-pro-vit", name
        assert {k: getattr(vision, k) for k in want} == want, name
        assert (vision.min_pixels, vision.max_pixels) == (size["shortest_edge"], size["longest_edge"]), name
    assert load_config(recipes["examples/mm_cpt/intern_s1_pro.yaml"], []).train.task == "mm_pretrain"
    assert load_config(recipes["examples/sft/intern_s1_pro.yaml"], []).train.task == "sft"
