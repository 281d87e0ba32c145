"""Write a random Intern-S1-mini-shaped checkpoint (InternViT-300M tower: 24 layers x 1024, 16 heads, LayerNorm,
qkv bias; InternVL projector; a small Qwen3 text model) in bf16 straight with safetensors, for conversion
timing / peak-memory measurements (docs/performance.md#conversion).

    python tests/conversion/make_big_interns1.py /tmp/big_s1 [--text-layers 4] [--text-hidden 1024]
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file


def shapes(text_layers: int, text_hidden: int, vocab: int) -> dict:
    v, f = 1024, 4096  # InternViT-300M width and MLP size
    out = {
        "model.vision_tower.embeddings.cls_token": (1, 1, v),
        "model.vision_tower.embeddings.patch_embeddings.projection.weight": (v, 3, 14, 14),
        "model.vision_tower.embeddings.patch_embeddings.projection.bias": (v,),
        "model.vision_tower.embeddings.position_embeddings": (1, 1025, v),
    }
    for i in range(24):
        p = f"model.vision_tower.encoder.layer.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "projection_layer"):
            out[p + f"attention.{n}.weight"] = (v, v)
            out[p + f"attention.{n}.bias"] = (v,)
        for n in ("layernorm_before", "layernorm_after"):
            out[p + f"{n}.weight"] = (v,)
            out[p + f"{n}.bias"] = (v,)
        out.update({p + "mlp.fc1.weight": (f, v), p + "mlp.fc1.bias": (f,), p + "mlp.fc2.weight": (v, f),
                    p + "mlp.fc2.bias": (v,), p + "lambda_1": (v,), p + "lambda_2": (v,)})
    pr = "model.multi_modal_projector."
    out.update({pr + "layer_norm.weight": (4 * v,), pr + "layer_norm.bias": (4 * v,),
                pr + "linear_1.weight": (text_hidden, 4 * v), pr + "linear_1.bias": (text_hidden,),
                pr + "linear_2.weight": (text_hidden, text_hidden), pr + "linear_2.bias": (text_hidden,)})
    t, kv, d, ffn = text_hidden, 8, 128, 3 * text_hidden
    lm = "model.language_model."
    out[lm + "embed_tokens.weight"] = (vocab, t)
    out[lm + "norm.weight"] = (t,)
    out["lm_head.weight"] = (vocab, t)
    for i in range(text_layers):
        p = f"{lm}layers.{i}."
        out.update({p + "input_layernorm.weight": (t,), p + "post_attention_layernorm.weight": (t,),
                    p + "self_attn.q_proj.weight": (t, t), p + "self_attn.k_proj.weight": (kv * d, t),
                    p + "self_attn.v_proj.weight": (kv * d, t), p + "self_attn.o_proj.weight": (t, t),
                    p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,),
                    p + "mlp.gate_proj.weight": (ffn, t), p + "mlp.up_proj.weight": (ffn, t),
                    p + "mlp.down_proj.weight": (t, ffn)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--text-layers", type=int, default=4)
    ap.add_argument("--text-hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    table = shapes(args.text_layers, args.text_hidden, args.vocab)
    gen = torch.Generator().manual_seed(0)
    shard, size, index, files = {}, 0, {}, []

    def flush():
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, os.path.join(args.out, name), metadata={"format": "pt"})
            files.append(name)
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for name, shape in table.items():
        shard[name] = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        size += shard[name].numel() * 2
        if size > 1 << 30:
            flush()
    flush()
    with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": index}, f)
    text = {"model_type": "qwen3", "vocab_size": args.vocab, "hidden_size": args.text_hidden,
            "intermediate_size": 3 * args.text_hidden, "num_hidden_layers": args.text_layers,
            "num_attention_heads": args.text_hidden // 128, "num_key_value_heads": 8, "head_dim": 128,
            "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False}
    vision = {"model_type": "interns1_vision", "hidden_size": 1024, "num_attention_heads": 16,
              "intermediate_size": 4096, "num_hidden_layers": 24, "norm_type": "layer_norm",
              "use_qk_norm": False, "attention_bias": True, "image_size": [448, 448], "patch_size": [14, 14],
              "layer_scale_init_value": 0.1, "layer_norm_eps": 1e-6, "hidden_act": "gelu"}
    config = {"architectures": ["InternS1ForConditionalGeneration"], "model_type": "interns1",
              "text_config": text, "vision_config": vision, "downsample_ratio": 0.5, "image_token_id": 31999,
              "projector_hidden_act": "gelu", "vision_feature_layer": -1,
              "vision_feature_select_strategy": "default", "torch_dtype": "bfloat16"}
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    total = sum(int(torch.Size(s).numel()) for s in table.values()) * 2
    print(json.dumps({"tensors": len(table), "gib": round(total / 2**30, 3), "shards": len(files)}))


if __name__ == "__main__":
    main()
