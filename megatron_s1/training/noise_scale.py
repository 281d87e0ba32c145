"""Gradient noise scale during training (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

The trainer already holds gradients at two batch sizes every step: each micro-batch's gradient on each DP rank
(the "small" batch, before the data-parallel reduction) and the global-batch gradient (the "big" batch, whose norm
is the logged grad_norm). From their squared norms the paper's App. A.1 gives unbiased estimates of |G|^2 and
tr(Sigma), and B_simple = tr(Sigma) / |G|^2 is the critical-batch estimate the console and metrics.jsonl report.

Batch sizes are counted in tokens (the loss is a per-token mean), so tr(Sigma) is the per-token gradient variance
and B_simple is in tokens; both batches are made of whole sequences, so correlation between the tokens of one
sequence is absorbed into that per-token variance and the estimate stays consistent (docs/scaling.md).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megatron_s1.config.schema import ConfigError


def gradient_noise_scale(small_sq_norm: float, small_batch: float, big_sq_norm: float,
                         big_batch: float) -> tuple[float, float]:
    """Unbiased (|G|^2, tr(Sigma)) from squared gradient norms at two batch sizes (McCandlish et al. 2018, App. A.1).

    With E[|G_B|^2] = |G|^2 + tr(Sigma) / B for a batch of B samples (App. A.1), two batch sizes give

        |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
        tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

    and the simple noise scale of §2.2 is B_simple = tr(Sigma) / |G|^2 (take the ratio of averaged estimates, not
    the average of ratios: each estimate is unbiased, their ratio is not). Either estimate can come out negative
    on one step; that is the price of unbiasedness.
    """
    if not small_batch < big_batch:
        raise ValueError(f"the small batch ({small_batch}) must be smaller than the big batch ({big_batch})")
    grad_sq = (big_batch * big_sq_norm - small_batch * small_sq_norm) / (big_batch - small_batch)
    trace = (small_sq_norm - big_sq_norm) / (1.0 / small_batch - 1.0 / big_batch)
    return grad_sq, trace


class NoiseScaleEMA:
    """Exponential moving averages of the |G|^2 and tr(Sigma) estimates, kept separately and divided at the end
    (the paper's App. A.1 advice), with Adam-style bias correction so the first steps are not pulled toward 0."""

    def __init__(self, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"train.noise_scale_ema must be in [0, 1), got {decay}")
        self.decay = decay
        self.grad_sq = 0.0
        self.trace = 0.0
        self.updates = 0

    def update(self, grad_sq: float, trace: float) -> None:
        self.grad_sq = self.decay * self.grad_sq + (1.0 - self.decay) * grad_sq
        self.trace = self.decay * self.trace + (1.0 - self.decay) * trace
        self.updates += 1

    def averages(self) -> tuple[float, float]:
        correction = 1.0 - self.decay ** self.updates
        return self.grad_sq / correction, self.trace / correction

    def b_simple(self) -> float:
        grad_sq, trace = self.averages()
        return trace / grad_sq if grad_sq > 0 else math.inf


class MicroBatchGradNorms:
    """Squared norm of every micro-batch's own gradient on this rank, read from the DDP grad buffers.

    The buffers accumulate across micro-batches, so a micro-batch's gradient is the buffer minus its value before
    that micro-batch's backward: one copy of the buffers (fp32, the size of the gradients) and two passes over them
    per micro-batch. `boundary()` is called before each forward and once before the DP reduction (the trainer wraps
    finalize_model_grads), which in the no-pipelining schedule brackets each micro-batch's backward.
    """

    def __init__(self, model_chunks: list):
        self.grads = [buffer.grad_data for chunk in model_chunks
                      for buffer in chunk.buffers + chunk.expert_parallel_buffers]
        self.previous = [torch.zeros_like(g) for g in self.grads]
        self.sq_norms: list[torch.Tensor] = []
        self.active = False

    def start(self) -> None:
        """Before a training step (the buffers are zeroed)."""
        for p in self.previous:
            p.zero_()
        self.sq_norms = []
        self.active = True

    def boundary(self) -> None:
        if not self.active:
            return
        total = None
        for grad, previous in zip(self.grads, self.previous):
            sq = torch.sum((grad - previous).float() ** 2)
            total = sq if total is None else total + sq
            previous.copy_(grad)
        self.sq_norms.append(total)

    def stop(self) -> list[torch.Tensor]:
        """Squared norms of the summed (not averaged) token gradients of each micro-batch, in schedule order."""
        self.active = False
        # The first boundary (before micro-batch 0's forward) saw zero buffers; it is not a micro-batch.
        return self.sq_norms[1:]


def check_noise_scale_supported(cfg, micro_batches_per_step: list[int], dp_size: int) -> None:
    p = cfg.parallel
    if p.pipeline > 1 or p.tensor > 1 or p.context > 1 or p.expert > 1 or p.overlap_grad_reduce:
        raise ConfigError("train.noise_scale needs pure data parallelism (parallel.tensor/pipeline/context/expert=1, "
                          "parallel.overlap_grad_reduce=false); estimate it on a data-parallel copy of the run or "
                          "set train.noise_scale=false")
    if min(micro_batches_per_step) * dp_size < 2:
        raise ConfigError("train.noise_scale needs at least 2 micro-batches per global batch (over all DP ranks) to "
                          "compare two batch sizes; lower data.micro_batch_size or raise train.global_batch_tokens")


def step_noise_scale(micro_sq_norms: list[torch.Tensor], micro_tokens: list[float], loss_scale: float,
                     global_grad_norm: float, device) -> dict:
    """One step's (|G|^2, tr(Sigma)) estimate from this rank's micro-batch gradients and the global grad norm.

    A micro-batch's mean gradient is its summed token gradient / its tokens (and / the loss scale). Over all
    micro-batches of all DP ranks the mean of |g_k|^2 has expectation |G|^2 + tr(Sigma) * mean(1/n_k), so the
    small batch is the harmonic mean of the n_k (the plain size when all micro-batches hold as many tokens).
    """
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for sq, tokens in zip(micro_sq_norms, micro_tokens):
        if tokens > 0:
            sums[0] += sq.double() / (tokens * loss_scale) ** 2
            sums[1] += 1.0 / tokens
            sums[2] += tokens
    count = torch.tensor([float(sum(1 for t in micro_tokens if t > 0))], dtype=torch.float64, device=device)
    stats = torch.cat([sums, count])
    dist.all_reduce(stats)
    small_sq_mean, inverse_sum, big_batch, micro_count = stats.tolist()
    small_sq_mean /= micro_count
    small_batch = micro_count / inverse_sum
    grad_sq, trace = gradient_noise_scale(small_sq_mean, small_batch, global_grad_norm ** 2, big_batch)
    return {"grad_sq": grad_sq, "trace": trace, "small_batch_tokens": small_batch, "big_batch_tokens": big_batch}
