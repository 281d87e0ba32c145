"""Grouped weight gradient accumulated straight into the fp32 `main_grad` (the routed experts' wgrad fusion).

    main_grad[e] += dy[rows of e]^T @ x[rows of e]        rows of e = offsets[e-1] .. offsets[e]

Why: with `model.moe_experts=grouped_mm` the experts' weight gradient used to be a bf16 [E, out, in] tensor from
`grouped_mm`, which Megatron's DDP hook then added into the fp32 main_grad (`main_grad += grad`): 2 bytes written,
then 2 + 4 read and 4 written per expert parameter and micro-batch. On the H100 Qwen3-30B-A3B slice (2.4B expert
parameters) that add was most of the 12.4 ms per micro-batch of fp32 gradient accumulation (docs/performance.md,
session 10 profile). This kernel reads the fp32 tile once, adds the tile's GEMM result and writes it back (8 bytes
per parameter). The per-expert row
offsets stay on the GPU (no host sync), as in the forward. It is Megatron's `gradient_accumulation_fusion` for
the grouped experts (TE GroupedLinear does the same with host-side splits).

Numerics: the products accumulate in fp32 inside the tile (like the bf16 GEMM did), but the sum is added to
main_grad without the intermediate rounding to bf16, so the result is at least as exact as before.

Runs wherever Triton runs: CUDA, or the CPU with TRITON_INTERPRET=1 (how the unit tests check it, in fp32: the
interpreter's bf16 dot is not exact).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N, BLOCK_K, BLOCK_T = 128, 128, 64
NUM_WARPS, NUM_STAGES = 8, 3


@triton.jit
def _grouped_wgrad_kernel(dy_ptr, x_ptr, out_ptr, offsets_ptr, N, K, stride_dy, stride_x,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_T: tl.constexpr):
    # One program per (expert, N tile, K tile); consecutive programs share an expert, so its rows stay in L2.
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tiles_k = tl.cdiv(K, BLOCK_K)
    expert = pid // (tiles_n * tiles_k)
    tile = pid % (tiles_n * tiles_k)
    rn = (tile // tiles_k) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = (tile % tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
    end = tl.load(offsets_ptr + expert)
    start = tl.load(offsets_ptr + expert - 1, mask=expert > 0, other=0)
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        rt = t0 + tl.arange(0, BLOCK_T)
        rows = rt < end
        a = tl.load(dy_ptr + rt[None, :].to(tl.int64) * stride_dy + rn[:, None],
                    mask=rows[None, :] & (rn[:, None] < N), other=0.0)  # dy^T tile [BLOCK_N, BLOCK_T]
        b = tl.load(x_ptr + rt[:, None].to(tl.int64) * stride_x + rk[None, :],
                    mask=rows[:, None] & (rk[None, :] < K), other=0.0)  # x tile [BLOCK_T, BLOCK_K]
        acc += tl.dot(a, b)
    ptrs = out_ptr + expert.to(tl.int64) * N * K + rn[:, None] * K + rk[None, :]
    inside = (rn[:, None] < N) & (rk[None, :] < K)
    acc += tl.load(ptrs, mask=inside, other=0.0)
    tl.store(ptrs, acc, mask=inside)


def grouped_wgrad_into(out: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """out[e] += dy[rows of e]^T @ x[rows of e] in place; out fp32 [E, N, K], dy [T, N], x [T, K], offsets the
    int32 cumulative row counts [E] (rows past offsets[-1] are ignored, as grouped_mm does)."""
    experts, n, k = out.shape
    if out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"grouped_wgrad_into needs a contiguous fp32 output, got {out.dtype}")
    if dy.shape[1] != n or x.shape[1] != k or dy.shape[0] != x.shape[0] or offsets.numel() != experts:
        raise ValueError(f"grouped_wgrad_into: shapes out {tuple(out.shape)}, dy {tuple(dy.shape)}, "
                         f"x {tuple(x.shape)}, offsets {tuple(offsets.shape)} do not agree")
    dy, x = dy.contiguous(), x.contiguous()
    grid = (experts * triton.cdiv(n, BLOCK_N) * triton.cdiv(k, BLOCK_K),)
    _grouped_wgrad_kernel[grid](dy, x, out, offsets, n, k, dy.stride(0), x.stride(0), BLOCK_N=BLOCK_N,
                                BLOCK_K=BLOCK_K, BLOCK_T=BLOCK_T, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return out
