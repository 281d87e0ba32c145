"""RMSNorm usable under sequence parallelism in the local (non-TE) spec.

Megatron's `WrappedTorchNorm` refuses sequence parallel, yet MoE + TP needs it. The weight is marked
`sequence_parallel` so Megatron's grad finalisation all-reduces its gradient across the TP group.
"""
import torch

from megatron.core.transformer import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in fp32 and cast back (as Qwen3 does)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6, **_unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
