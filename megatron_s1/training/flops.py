"""Model FLOPs per token and MFU for Qwen3 / Qwen3-MoE decoder stacks.

Counting convention (one multiply-add = 2 FLOPs; training = forward + backward = 3x forward; activation
recomputation is not counted, so this is *model* FLOPs utilisation). Per layer and token, forward:
  attention projections  2*h*(nq*d + 2*nkv*d) + 2*nq*d*h
  attention core         2 * 2*nq*d*(s/2)        (QK^T and AV over the causal average context s/2)
  dense SwiGLU MLP       2*3*h*f
  MoE                    2*h*E (router) + k * 2*3*h*f_e (+ shared expert 2*3*h*f_s)
plus the LM head 2*h*V per token. The same formula as the PaLM appendix-B / Megatron estimates, with
GQA and top-k experts made explicit.
"""
from __future__ import annotations

from megatron_s1.config.schema import ModelConfig

# Dense peak throughput per device in TFLOP/s (no sparsity), used for MFU.
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0,
    ("H100", "fp8"): 1979.0,
    ("H200", "bf16"): 989.0,
    ("H200", "fp8"): 1979.0,
    ("A100", "bf16"): 312.0,
    ("B200", "bf16"): 2250.0,
    ("B200", "fp8"): 4500.0,
}


def forward_flops_per_token(m: ModelConfig, seq_length: int) -> float:
    h, d = m.hidden_size, m.kv_channels
    nq, nkv = m.num_attention_heads, m.num_query_groups
    attn_proj = 2 * h * (nq * d + 2 * nkv * d) + 2 * nq * d * h
    attn_core = 2 * 2 * nq * d * (seq_length / 2)
    if m.num_moe_experts:
        ffn_e = m.moe_ffn_hidden_size or m.ffn_hidden_size
        mlp = 2 * h * m.num_moe_experts + m.moe_router_topk * 2 * 3 * h * ffn_e
        if m.moe_shared_expert_intermediate_size:
            mlp += 2 * 3 * h * m.moe_shared_expert_intermediate_size
    else:
        mlp = 2 * 3 * h * m.ffn_hidden_size
    return m.num_layers * (attn_proj + attn_core + mlp) + 2 * h * m.vocab_size


def training_flops_per_token(m: ModelConfig, seq_length: int) -> float:
    return 3.0 * forward_flops_per_token(m, seq_length)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak dense TFLOP/s for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), or None if unknown."""
    for (chip, prec), value in PEAK_TFLOPS.items():
        if chip in device_name and prec == precision:
            return value
    return None
