"""Vocab-parallel cross-entropy in two Triton passes over the logits (`model.cross_entropy=triton`).

    loss_i = log sum_j exp(z_ij) - z_{i, y_i}          d loss_i / d z_ij = softmax(z_i)_j - [j == y_i]

Why our own: the LM head's logits are the largest activation of a Qwen3 model (tokens x 151,936). Megatron-Core's
fused ("native") cross-entropy upcasts them to fp32 and walks them about five times; on the H100 probe (8,192
tokens per step) that was ~20 ms of a ~118 ms step (docs/performance.md). TE's one-pass kernel is flagged by
Megatron-Core for known stability issues. Here the forward reads the logits once (per-row running max and sum of
exponentials in fp32, plus the target logit) and the backward reads them once more and writes the gradient in the
logits' dtype. With tensor parallelism each rank holds a vocabulary slice; the per-row max, sum of exponentials and
target logit are combined across the TP group with three all-reduces of one float per token.

Runs wherever Triton runs: CUDA, or the CPU with TRITON_INTERPRET=1 (how the unit tests check it).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import triton
import triton.language as tl

BLOCK = 2048
NUM_WARPS = 8


@triton.jit
def _row_stats_kernel(logits_ptr, labels_ptr, max_ptr, sumexp_ptr, target_ptr, row_stride, n_cols, vocab_start,
                      BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    # Per-lane running max / sum of exp; lanes start at a finite floor so the rescaling never meets inf - inf.
    lane_max = tl.full([BLOCK], -1e30, tl.float32)
    lane_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < n_cols
        x = tl.load(base + cols, mask=valid, other=-1e30).to(tl.float32)
        new_max = tl.maximum(lane_max, x)
        lane_sum = lane_sum * tl.exp(lane_max - new_max) + tl.where(valid, tl.exp(x - new_max), 0.0)
        lane_max = new_max
    row_max = tl.max(lane_max, 0)
    row_sum = tl.sum(lane_sum * tl.exp(lane_max - row_max), 0)
    label = tl.load(labels_ptr + row) - vocab_start
    local = (label >= 0) & (label < n_cols)
    target = tl.load(base + tl.where(local, label, 0)).to(tl.float32)
    tl.store(max_ptr + row, row_max)
    tl.store(sumexp_ptr + row, row_sum)
    tl.store(target_ptr + row, tl.where(local, target, 0.0))


@triton.jit
def _grad_kernel(logits_ptr, grad_ptr, labels_ptr, lse_ptr, grad_loss_ptr, row_stride, grad_row_stride, n_cols,
                 vocab_start, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    out = grad_ptr + row * grad_row_stride
    lse = tl.load(lse_ptr + row)
    g = tl.load(grad_loss_ptr + row)
    label = tl.load(labels_ptr + row) - vocab_start
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        valid = cols < n_cols
        x = tl.load(base + cols, mask=valid, other=0.0).to(tl.float32)
        grad = (tl.exp(x - lse) - tl.where(cols == label, 1.0, 0.0)) * g
        tl.store(out + cols, grad.to(grad_ptr.dtype.element_ty), mask=valid)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, tp_group):
        shape, local_vocab = logits.shape[:-1], logits.shape[-1]
        z = logits.reshape(-1, local_vocab)
        if z.stride(-1) != 1:
            z = z.contiguous()
        y = labels.reshape(-1).contiguous()
        world = dist.get_world_size(tp_group) if tp_group is not None else 1
        vocab_start = (dist.get_rank(tp_group) if world > 1 else 0) * local_vocab
        rows = z.shape[0]
        row_max, sumexp, target = (torch.empty(rows, dtype=torch.float32, device=z.device) for _ in range(3))
        if rows:
            _row_stats_kernel[(rows,)](z, y, row_max, sumexp, target, z.stride(0), local_vocab, vocab_start,
                                       BLOCK=BLOCK, num_warps=NUM_WARPS)
        if world > 1:
            global_max = row_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=tp_group)
            sumexp.mul_(torch.exp(row_max - global_max))
            dist.all_reduce(sumexp, group=tp_group)
            dist.all_reduce(target, group=tp_group)
            row_max = global_max
        lse = row_max + torch.log(sumexp)
        ctx.save_for_backward(z, y, lse)
        ctx.vocab_start, ctx.shape = vocab_start, logits.shape
        return (lse - target).view(shape)

    @staticmethod
    def backward(ctx, grad_loss):
        z, y, lse = ctx.saved_tensors
        g = grad_loss.reshape(-1).to(torch.float32).contiguous()
        grad = torch.empty_like(z)
        if z.shape[0]:
            _grad_kernel[(z.shape[0],)](z, grad, y, lse, g, z.stride(0), grad.stride(0), z.shape[1], ctx.vocab_start,
                                        BLOCK=BLOCK, num_warps=NUM_WARPS)
        return grad.view(ctx.shape), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, tp_group=None) -> torch.Tensor:
    """Per-token cross-entropy (fp32, shape of `labels`) of `logits` [..., local vocab slice of this TP rank]."""
    return _VocabParallelCrossEntropy.apply(logits, labels, tp_group)
