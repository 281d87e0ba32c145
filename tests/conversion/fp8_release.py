"""A tiny Intern-S1-Pro checkpoint in the release's block-FP8 format, written here independently of
megatron_s1.conversion.fp8 (plain loops over 128x128 blocks), and the matching reference dequantization.

Like the release: e4m3 weights for the attention projections and routed experts, float32 power-of-two
(`ue8m0`) `weight_scale_inv` per block, everything else (embeddings, LM head, norms, router gates, FoPE
coefficients) in bf16 and listed by full module name in `modules_to_not_convert`.
"""
from __future__ import annotations

import json
import math
import os

import torch
from safetensors.torch import load_file

from tests.conversion.hf_models import make_pro_model, write_two_shards

BLOCK = 128
# Shapes not multiple of 128 (partial edge blocks): q_proj [192, 192], k_proj [96, 192], expert gate [80, 192],
# down [192, 80].
SHAPES = dict(hidden_size=192, head_dim=48, moe_intermediate_size=80)
ZERO_SCALE = 2.0 ** -10  # the scale this writer stores for an all-zero block (any value is valid there)


def _quantized_module(name: str) -> bool:
    return name.endswith(".weight") and (".self_attn." in name and name.endswith("_proj.weight")
                                          or ".mlp.experts." in name)


def quantize_blockwise(weight: torch.Tensor, doubled=()) -> tuple:
    """(e4m3, float32 scale_inv) block by block: scale = 2^ceil(log2(amax / 448)). Blocks in `doubled` get twice
    that scale, as a quantizer with other rounding would choose (their largest e4m3 value is at most 224)."""
    rows, cols = weight.shape
    grid = (math.ceil(rows / BLOCK), math.ceil(cols / BLOCK))
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    scale = torch.empty(grid, dtype=torch.float32)
    for i in range(grid[0]):
        for j in range(grid[1]):
            block = weight[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK].float()
            amax = block.abs().max().item()
            s = ZERO_SCALE if amax == 0 else 2.0 ** math.ceil(math.log2(amax / 448.0))
            if (i, j) in doubled:
                s *= 2
            scale[i, j] = s
            q[i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK] = (block / s).to(torch.float8_e4m3fn)
    return q, scale


def reference_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bf16 weight of an e4m3 tensor and its block scales, one block at a time."""
    out = torch.empty(q.shape, dtype=torch.bfloat16)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            rows, cols = slice(i * BLOCK, (i + 1) * BLOCK), slice(j * BLOCK, (j + 1) * BLOCK)
            out[rows, cols] = (q[rows, cols].float() * scale[i, j].item()).to(torch.bfloat16)
    return out


def make_fp8_pro_model(out_dir: str, seed: int = 0, **overrides) -> str:
    """The tiny Pro model of hf_models.make_pro_model (shapes SHAPES + overrides) stored as the release stores
    Intern-S1-Pro. One block of layer 0's q_proj is zero and one of its o_proj has a doubled scale."""
    source = make_pro_model(out_dir + ".bf16", seed=seed, **{**SHAPES, **overrides})
    state = {}
    for file in sorted(f for f in os.listdir(source) if f.endswith(".safetensors")):
        state.update(load_file(os.path.join(source, file)))
    out, kept = {}, set()
    for name, tensor in sorted(state.items()):
        if _quantized_module(name):
            doubled = {(0, 1)} if name.endswith("layers.0.self_attn.o_proj.weight") else ()
            if name.endswith("layers.0.self_attn.q_proj.weight"):
                tensor = tensor.clone()
                tensor[BLOCK:, :BLOCK] = 0
            out[name], out[name + "_scale_inv"] = quantize_blockwise(tensor, doubled)
        else:
            out[name] = tensor.to(torch.bfloat16).contiguous()
            kept.add(name.rsplit(".", 1)[0])
    os.makedirs(out_dir)
    write_two_shards(out, out_dir)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["dtype"] = "bfloat16"
    config["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                     "scale_fmt": "ue8m0", "weight_block_size": [BLOCK, BLOCK],
                                     "modules_to_not_convert": sorted(kept, reverse=True)}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir
