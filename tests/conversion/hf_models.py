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


# Tiny Intern-S1: tiny-dense / tiny-moe text (vocab of examples/mm_cpt/tiny_cpu.yaml) + tiny-vit tower
# (56 px tiles, patch 14, 3 heads: padded to 4 under TP=2) + InternVL projector.
TINY_VIT = dict(hidden_size=48, num_attention_heads=3, intermediate_size=96, num_hidden_layers=2,
                norm_type="rms_norm", use_qk_norm=True, attention_bias=False, image_size=[56, 56],
                patch_size=[14, 14], layer_scale_init_value=0.1, layer_norm_eps=1e-6, initializer_range=0.1)
MM_VOCAB = 2112
IMAGE_TOKEN_ID = 2050  # <IMG_CONTEXT> reserved after the bundled tokenizer's vocabulary


def make_interns1_model(out_dir: str, text: str = "dense", seed: int = 0, vision_overrides=None) -> str:
    """A random Intern-S1 checkpoint in the released format: transformers' InternVL classes (which Intern-S1's
    modeling subclasses without renaming anything) saved, then config.json relabelled as InternS1."""
    import json
    import os

    import transformers

    torch.manual_seed(seed)
    text_cfg = dict(COMMON, vocab_size=MM_VOCAB, intermediate_size=128, model_type="qwen3")
    if text == "moe":
        text_cfg.update(model_type="qwen3_moe", moe_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                        norm_topk_prob=True)
    config = transformers.InternVLConfig(vision_config=dict(TINY_VIT, **(vision_overrides or {})),
                                         text_config=text_cfg, image_token_id=IMAGE_TOKEN_ID,
                                         downsample_ratio=0.5, tie_word_embeddings=False)
    model = transformers.InternVLForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.language_model."):
                if name.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "lambda" in name:
                p.copy_(0.5 + 0.1 * torch.randn_like(p))
            else:  # every other vision / projector tensor (incl. biases, cls token, positions): O(0.1)
                p.copy_(0.1 * torch.randn_like(p))
    # transformers 5 saves InternVL under its legacy names; Intern-S1 checkpoints hold the module names
    # (model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*, lm_head.*): write those.
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():  # fused experts -> the released per-expert names
        if name.endswith("mlp.experts.gate_up_proj"):
            base = name[: -len("gate_up_proj")]
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2)
                state[f"{base}{e}.gate_proj.weight"] = gate.contiguous()
                state[f"{base}{e}.up_proj.weight"] = up.contiguous()
        elif name.endswith("mlp.experts.down_proj"):
            base = name[: -len("down_proj")]
            for e, down in enumerate(tensor):
                state[f"{base}{e}.down_proj.weight"] = down.contiguous()
        else:
            state[name] = tensor.detach().contiguous()
    names = sorted(state)
    shards = [names[i::3] for i in range(3)]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: state[n] for n in shard}, os.path.join(out_dir, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in shard})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    cfg = config.to_dict()
    cfg.pop("transformers_version", None)
    cfg["architectures"] = ["InternS1ForConditionalGeneration"]
    cfg["model_type"] = "interns1"
    cfg["vision_config"]["model_type"] = "interns1_vision"
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return out_dir


def make_pro_model(out_dir: str, seed: int = 0, groups: int = 2, **overrides) -> str:
    """A random Intern-S1-Pro text backbone in the released layout: Qwen3-MoE weights under
    `model.language_model.`, one global pair of FoPE coefficients `model.language_model.rotary_emb.{cos,sin}_coef`
    [H_kv, M, M], `text_config` with `router_n_groups` and `rope_scaling.fope_*` (vision tower left out)."""
    import json
    import os

    import transformers

    from megatron_s1.models.pro.fope import fope_inv_freq

    torch.manual_seed(seed)
    text = {**COMMON, "intermediate_size": 128, "moe_intermediate_size": 64, "num_experts": 4,
            "num_experts_per_tok": 2, "norm_topk_prob": True, **overrides}
    import tempfile

    from safetensors.torch import load_file

    model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**text))
    state = {}
    with tempfile.TemporaryDirectory() as tmp:  # save_pretrained writes the hub's per-expert names
        model.save_pretrained(tmp)
        for file in sorted(f for f in os.listdir(tmp) if f.endswith(".safetensors")):
            for name, p in load_file(os.path.join(tmp, file)).items():
                p = 1.0 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else p
                state[name.replace("model.", "model.language_model.", 1)] = p.contiguous()
    freqs = fope_inv_freq(text["head_dim"], text["rope_theta"], text["max_position_embeddings"]).numel()
    shape = (text["num_key_value_heads"], freqs, freqs)
    state["model.language_model.rotary_emb.cos_coef"] = torch.eye(freqs) + 0.3 * torch.randn(shape)
    state["model.language_model.rotary_emb.sin_coef"] = torch.eye(freqs) + 0.3 * torch.randn(shape)
    os.makedirs(out_dir, exist_ok=True)
    write_two_shards(state, out_dir)
    text_config = {k: v for k, v in text.items() if k != "initializer_range"}
    text_config.update(model_type="interns1_pro_text", hidden_act="silu", attention_bias=False,
                       decoder_sparse_step=1, mlp_only_layers=[], router_n_groups=groups,
                       initializer_range=0.1, dtype="float32",
                       rope_scaling={"rope_type": "default", "fope_init_factor": 0.5, "fope_sep_head": True,
                                     "num_inv_freq": None})
    config = {"architectures": ["InternS1ProForConditionalGeneration"], "model_type": "interns1_pro",
              "text_config": text_config, "tie_word_embeddings": False, "image_token_id": 151655}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def write_two_shards(state: dict, out_dir: str) -> None:
    """Save `state` as an HF checkpoint in two safetensors shards with its index (names alternate between the
    shards, so a converter must follow the index)."""
    import json
    import os

    from safetensors.torch import save_file

    names = sorted(state)
    weight_map = {}
    for i in range(2):
        file = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: state[n] for n in names[i::2]}, os.path.join(out_dir, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names[i::2]})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
