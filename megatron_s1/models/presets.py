"""Architecture presets: the published shapes of the Intern-S1 text backbones and tiny CPU variants.

A preset fills `model.*` config fields; anything set explicitly in a recipe or on the command line wins.
Numbers come from the released HF configs (Qwen3-MoE 235B-A22B for Intern-S1, Qwen3-8B for
Intern-S1-mini, Qwen3-30B-A3B).
"""
from __future__ import annotations

# Fields shared by every Qwen3-family backbone.
_QWEN3 = dict(
    kv_channels=128,
    normalization="RMSNorm",
    norm_epsilon=1e-6,
    qk_layernorm=True,
    rotary_base=1_000_000,
    untie_embeddings_and_output_weights=True,
    add_qkv_bias=False,
    activation="swiglu",
)

PRESETS: dict[str, dict] = {
    # Intern-S1 text backbone = Qwen3-MoE 235B-A22B.
    "intern-s1": dict(
        _QWEN3,
        num_layers=94,
        hidden_size=4096,
        num_attention_heads=64,
        num_query_groups=4,
        ffn_hidden_size=12288,
        num_moe_experts=128,
        moe_router_topk=8,
        moe_ffn_hidden_size=1536,
        moe_norm_topk_prob=True,
        moe_shared_expert_intermediate_size=None,
        vocab_size=153216,
        max_position_embeddings=40960,
    ),
    # Intern-S1-Pro text backbone (released HF config): 4x the experts of Intern-S1 in 8 routing groups
    # (one per EP rank at EP=8), STE router gradient, FoPE with RoPE theta 5e6. docs/intern_s1_pro.md.
    "intern-s1-pro": dict(
        _QWEN3,
        num_layers=94,
        hidden_size=4096,
        num_attention_heads=64,
        num_query_groups=4,
        ffn_hidden_size=12288,
        num_moe_experts=512,
        moe_router_topk=8,
        moe_router_groups=8,
        moe_router_ste=True,
        moe_ffn_hidden_size=1536,
        moe_norm_topk_prob=True,
        moe_shared_expert_intermediate_size=None,
        vocab_size=155008,
        max_position_embeddings=262144,
        rotary_base=5_000_000,
        position_embedding_type="fope",
        fope_init_factor=0.5,
        fope_sep_head=True,
        fope_num_inv_freq=None,
    ),
    # Intern-S1-mini text backbone = Qwen3-8B (dense).
    "intern-s1-mini": dict(
        _QWEN3,
        num_layers=36,
        hidden_size=4096,
        num_attention_heads=32,
        num_query_groups=8,
        ffn_hidden_size=12288,
        num_moe_experts=None,
        vocab_size=153216,
        max_position_embeddings=40960,
    ),
    "qwen3-30b-a3b": dict(
        _QWEN3,
        num_layers=48,
        hidden_size=2048,
        num_attention_heads=32,
        num_query_groups=4,
        ffn_hidden_size=6144,
        num_moe_experts=128,
        moe_router_topk=8,
        moe_ffn_hidden_size=768,
        moe_norm_topk_prob=True,
        vocab_size=151936,
        max_position_embeddings=40960,
    ),
    # CPU-sized variants with the same structure (GQA, QK-norm, untied embeddings).
    "tiny-dense": dict(
        _QWEN3,
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=128,
        num_moe_experts=None,
        vocab_size=2048,
        max_position_embeddings=512,
        rotary_base=10_000,
    ),
    "tiny-moe": dict(
        _QWEN3,
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=128,
        num_moe_experts=4,
        moe_router_topk=2,
        moe_ffn_hidden_size=64,
        moe_norm_topk_prob=True,
        vocab_size=2048,
        max_position_embeddings=512,
        rotary_base=10_000,
    ),
    # CPU-sized Intern-S1-Pro: 8 experts in 2 groups (top-2 per group), STE, FoPE.
    "tiny-pro": dict(
        _QWEN3,
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=128,
        num_moe_experts=8,
        moe_router_topk=4,
        moe_router_groups=2,
        moe_router_ste=True,
        moe_ffn_hidden_size=32,
        moe_norm_topk_prob=True,
        vocab_size=2048,
        max_position_embeddings=512,
        rotary_base=10_000,
        position_embedding_type="fope",
        fope_init_factor=0.5,
        fope_sep_head=True,
    ),
}


def preset_fields(name: str) -> dict:
    """Return a copy of a preset's fields, or raise with the list of known presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


# ---------------------------------------------------------------- multimodal encoders (issue 4)
# Vision towers (InternViT, 448x448 tiles, patch 14). Numbers from the released InternViT configs.
VISION_PRESETS: dict[str, dict] = {
    # InternViT-6B (Intern-S1): 25 heads are padded to a TP multiple; QK-norm spans the full hidden size.
    "internvit-6b": dict(num_layers=45, hidden_size=3200, num_attention_heads=25, ffn_hidden_size=12800,
                         normalization="RMSNorm", norm_epsilon=1e-6, qk_layernorm=True, add_qkv_bias=False,
                         image_size=448, patch_size=14, layer_scale_init=0.1),
    # InternViT-300M (Intern-S1-mini).
    "internvit-300m": dict(num_layers=24, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=4096,
                           normalization="LayerNorm", norm_epsilon=1e-6, qk_layernorm=False, add_qkv_bias=True,
                           image_size=448, patch_size=14, layer_scale_init=0.1),
    # CPU-sized tower with the 6B structure (3 heads: padded to 4 under TP=2).
    "tiny-vit": dict(num_layers=2, hidden_size=48, num_attention_heads=3, ffn_hidden_size=96,
                     normalization="RMSNorm", norm_epsilon=1e-6, qk_layernorm=True, add_qkv_bias=False,
                     image_size=56, patch_size=14, layer_scale_init=0.1),
    # Intern-S1-Pro tower (release config.json vision_config): Qwen3-VL style ViT, 16 px patches of 2 frames,
    # 2x2 patches per LLM token, a 48 x 48 learned position table; LayerNorm, qkv bias, GELU-tanh MLP.
    "intern-s1-pro-vit": dict(arch="pro", num_layers=24, hidden_size=1024, num_attention_heads=16,
                              ffn_hidden_size=4096, normalization="LayerNorm", norm_epsilon=1e-6, qk_layernorm=False,
                              add_qkv_bias=True, patch_size=16, temporal_patch_size=2, spatial_merge_size=2,
                              num_position_embeddings=2304, min_pixels=65536, max_pixels=16777216,
                              video_min_pixels=4096, video_max_pixels=25165824),
    # CPU-sized tower of that structure (images of 32..128 px a side: 4..64 patches).
    "tiny-pro-vit": dict(arch="pro", num_layers=2, hidden_size=32, num_attention_heads=2, ffn_hidden_size=64,
                         normalization="LayerNorm", norm_epsilon=1e-6, qk_layernorm=False, add_qkv_bias=True,
                         patch_size=16, temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=64,
                         min_pixels=1024, max_pixels=16384, video_min_pixels=1024, video_max_pixels=32768),
}

# Time-series encoder (adaptive patching + Whisper-style encoder) of Intern-S1.
TIMESERIES_PRESETS: dict[str, dict] = {
    "intern-s1-ts": dict(patch_hidden=128, patch_heads=8, patch_layers=1, patch_ffn=2048, adapt_in_dim=256,
                         num_mel_bins=80, d_model=1024, num_layers=24, num_heads=16, ffn_hidden_size=4096,
                         max_source_positions=1500, out_dim=1024),
    "tiny-ts": dict(patch_hidden=16, patch_heads=2, patch_layers=1, patch_ffn=32, adapt_in_dim=32,
                    num_mel_bins=8, d_model=32, num_layers=1, num_heads=2, ffn_hidden_size=64,
                    max_source_positions=64, out_dim=32),
}

# With train.task=mm_pretrain the model presets mean the full multimodal models: these vision presets
# fill `vision.preset` when it is not given.
MM_DEFAULT_VISION = {"intern-s1": "internvit-6b", "intern-s1-mini": "internvit-300m",
                     "intern-s1-pro": "intern-s1-pro-vit", "tiny-pro": "tiny-pro-vit"}


def encoder_preset_fields(kind: str, name: str) -> dict:
    table = {"vision": VISION_PRESETS, "timeseries": TIMESERIES_PRESETS}[kind]
    if name not in table:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of: {', '.join(sorted(table))}")
    return dict(table[name])
