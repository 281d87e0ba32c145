"""Tiny random HF Qwen3 / Qwen3-MoE models built with transformers itself (same classes and config fields as
the released checkpoints), saved as sharded safetensors."""
from __future__ import annotations

import torch

# Shapes of the tiny-dense / tiny-moe presets, so `megatron-s1 train model.preset=tiny-moe
# checkpoint.pretrained=...` can start from the converted checkpoint. A larger init std than HF's default
# gives O(1) logits, so a wrong mapping cannot hide below the tolerance.
COMMON = dict(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6, rope_theta=10_000.0,
              tie_word_embeddings=False, initializer_range=0.1)


def make_hf_model(kind: str, out_dir: str, seed: int = 0, **overrides) -> str:
    import transformers

    torch.manual_seed(seed)
    if kind == "dense":
        config = transformers.Qwen3Config(**dict(COMMON, intermediate_size=128, **overrides))
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.Qwen3MoeConfig(**dict(COMMON, intermediate_size=128, moe_intermediate_size=64,
                                                    num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                                                    **overrides))
        model = transformers.Qwen3MoeForCausalLM(config)
    # Randomise the norms too (HF initialises them to ones), so a wrong mapping cannot hide.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir, max_shard_size="200KB")
    return out_dir
