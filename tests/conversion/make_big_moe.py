"""Write a random Qwen3-MoE HF checkpoint of a few GB (bf16) with safetensors directly, never holding the
model in memory (one layer at a time) and without transformers: the input of the peak-RSS measurement.

    python tests/conversion/make_big_moe.py OUT_DIR [--layers 12 --experts 64]   # ~2.5 GB at the defaults
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from safetensors.torch import save_file


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--moe-ffn", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    h, heads, groups, d = args.hidden, 16, 4, 64
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    weight_map, total = {}, 0

    def flush(tensors: dict, index: int) -> None:
        nonlocal total
        name = f"model-{index:05d}-of-{args.layers + 1:05d}.safetensors"
        save_file(tensors, os.path.join(args.out, name), metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()

    flush({"model.embed_tokens.weight": rand(args.vocab, h), "lm_head.weight": rand(args.vocab, h),
           "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}, 1)
    for layer in range(args.layers):
        p = f"model.layers.{layer}."
        t = {p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
             p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
             p + "self_attn.q_proj.weight": rand(heads * d, h), p + "self_attn.k_proj.weight": rand(groups * d, h),
             p + "self_attn.v_proj.weight": rand(groups * d, h), p + "self_attn.o_proj.weight": rand(h, heads * d),
             p + "self_attn.q_norm.weight": torch.ones(d, dtype=torch.bfloat16),
             p + "self_attn.k_norm.weight": torch.ones(d, dtype=torch.bfloat16),
             p + "mlp.gate.weight": rand(args.experts, h)}
        for e in range(args.experts):
            q = f"{p}mlp.experts.{e}."
            t[q + "gate_proj.weight"] = rand(args.moe_ffn, h)
            t[q + "up_proj.weight"] = rand(args.moe_ffn, h)
            t[q + "down_proj.weight"] = rand(h, args.moe_ffn)
        flush(t, layer + 2)
        del t
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": args.vocab,
        "hidden_size": h, "intermediate_size": 4 * h, "moe_intermediate_size": args.moe_ffn,
        "num_hidden_layers": args.layers, "num_attention_heads": heads, "num_key_value_heads": groups,
        "head_dim": d, "num_experts": args.experts, "num_experts_per_tok": 8, "norm_topk_prob": True,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None,
        "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False, "decoder_sparse_step": 1,
        "mlp_only_layers": [], "router_aux_loss_coef": 0.001, "initializer_range": 0.02, "use_sliding_window": False,
        "sliding_window": None, "torch_dtype": "bfloat16", "use_cache": True,
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"wrote {args.out}: {total / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
