"""Token-weighted language-model losses for multimodal training.

InternVL "square averaging" (Intern-S1 report, Eq. 4; InternVL 2.5): a token of sample i weighs
    w_i = 1 / sqrt(l_i),     l_i = number of loss (text) tokens of sample i,
and the loss of a global batch B (all micro-batches of all data-parallel ranks) is
    L = sum_{i in B} w_i * sum_{j in i} CE_ij  /  sum_{i in B} w_i * l_i  =  sum_i w_i * sum_j CE_ij / sum_i sqrt(l_i).
Token averaging (w_i = 1) favours long samples, sample averaging (w_i = 1/l_i) short ones; the square
root sits between the two.

How it meets Megatron's per-token-loss mode: Megatron sums the loss of every micro-batch and divides the
gradient by the sum of the `num_tokens` they return, over all micro-batches and DP ranks (an integer
tensor). Each micro-batch returns its integer count of loss tokens, so that sum is N = sum_i l_i over the
global batch, and a loss numerator scaled by N / D, D = sum_i sqrt(l_i) over the global batch. The data
path computes N and D for the whole global batch (every rank reads the same global batch lengths), so
the normalisation is global, not per rank or per micro-batch. Reported loss = sum(numerators) / N = L.

Packed rows (data.packing) hold several samples, so the weight is per token (`token_weights`: w_i on the
tokens of sample i); N and D still sum over every sample of every pack of the global batch.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


def square_average_weights(lengths: Iterable[int]) -> list[float]:
    """Per-sample token weight 1/sqrt(l_i) (0 for samples with no loss tokens). Intern-S1 Eq. 4."""
    return [1.0 / math.sqrt(n) if n > 0 else 0.0 for n in lengths]


def sample_weights(lengths: Iterable[int], mode: str = "square") -> list[float]:
    lengths = list(lengths)
    if mode == "square":
        return square_average_weights(lengths)
    if mode == "token":
        return [1.0 if n > 0 else 0.0 for n in lengths]
    raise ValueError(f"mm.loss_weighting must be square or token, got {mode!r}")


def global_normaliser(lengths: Iterable[int], mode: str = "square") -> tuple[float, int]:
    """(D, N) for a global batch: D = sum_i w_i * l_i (= sum sqrt(l_i) for square), N = sum_i l_i."""
    lengths = list(lengths)
    weights = sample_weights(lengths, mode)
    return float(sum(w * n for w, n in zip(weights, lengths))), int(sum(lengths))


def token_weights(cu_seqlens: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """[1, s] weights of a packed row: weights[k] on the tokens of its k-th sample (segment k of cu_seqlens),
    0 on a trailing padding segment."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    per_segment = torch.zeros(len(lengths), dtype=torch.float32)
    per_segment[: len(weights)] = torch.tensor(weights, dtype=torch.float32)
    return torch.repeat_interleave(per_segment, lengths)[None]


def weighted_token_loss(loss_mask: torch.Tensor, sample_weight: torch.Tensor, global_weight_sum: float,
                        global_tokens: int, output_tensor: torch.Tensor):
    """Megatron loss_func for one micro-batch.

    loss_mask, output_tensor: [b, s]; sample_weight: [b] (w_i of each row = sample) or [b, s] (w_i of each
    token's sample, packed rows). Returns (numerator, num_tokens (int), {"lm loss": [numerator, num_tokens]})
    with numerator = N/D * sum_i w_i sum_j CE_ij.
    """
    losses = output_tensor.float()
    mask = loss_mask.float()
    weight = sample_weight.to(losses)
    if weight.dim() == losses.dim() - 1:
        weight = weight.unsqueeze(-1)
    weighted = (losses * mask * weight).sum()
    scale = float(global_tokens) / global_weight_sum if global_weight_sum > 0 else 0.0
    numerator = weighted * scale
    count = mask.sum()
    return numerator, count.to(torch.int), {"lm loss": torch.stack([numerator.detach(), count])}
