"""Fourier Position Encoding (FoPE) as used by Intern-S1-Pro (Pro §2.4), for Megatron's SelfAttention.

Formulas (all here):

* `fope_inv_freq` - frequency clipping. RoPE frequencies w_m = theta^(-2m/d), m = 0..d/2-1. Frequencies
  whose period 2*pi/w_m is longer than the training context (w_m <= 2*pi / max_position_embeddings) never
  see a full period during training ("under-trained"); FoPE drops them, keeping the D fastest ones
  (or the first `num_inv_freq` when given).
* `fope_init_coefficients` - mixing matrices C^cos, C^sin of shape [H_kv, D, D] (`sep_head`, one per KV
  head) or [D, D]: I + N(0, xavier(gain=fope_init_factor)). With fope_init_factor = 0 they are identity.
* `fope_cos_sin` - for position t, KV head h and output dimension d < D:

      cos_h,d(t) = sum_m C^cos_{h,m,d} cos(w_m t),      sin_h,d(t) = sum_m C^sin_{h,m,d} sin(w_m t)

  and for the clipped dimensions d >= D: cos = sin = 1 (a position-independent, i.e. zero-frequency,
  map - exactly as the released Intern-S1-Pro modeling code pads them). Each half of the head uses the
  same table: cos(t) = [cos_h(t), cos_h(t)], sin(t) = [sin_h(t), sin_h(t)].
* `apply_fope` - q' = q * cos + rotate_half(q) * sin, per head; query head i uses KV head i // (Hq/Hkv)
  (GQA grouping), the key uses its own head.

With identity mixing and no clipping (num_inv_freq = d/2), cos/sin are RoPE's and FoPE == RoPE.

In Megatron the module lives in each attention layer (`self_attention.fope.{cos,sin}_coef`, sharded over
tensor parallelism by KV head); the released HF model has one global copy
(`model.language_model.rotary_emb.{cos,sin}_coef`): all layers start from the same seeded initialisation
and conversion copies the global tensors into every layer. The positions are read from the rotary table
Megatron's GPTModel already computes (its first angle column is w_0 * t = t), so packed documents,
position ids and inference offsets work as they do for RoPE.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

FOPE_INIT_SEED = 123  # same seed on every rank and layer: replicas and TP shards agree


@dataclass(frozen=True)
class FoPEOptions:
    rotary_base: float
    max_position_embeddings: int
    init_factor: float = 0.5
    sep_head: bool = True
    num_inv_freq: Optional[int] = None
    learnable: bool = True


def fope_inv_freq(head_dim: int, base: float, max_position_embeddings: int,
                  num_inv_freq: Optional[int] = None) -> torch.Tensor:
    """Kept RoPE frequencies (decreasing): those with period < max_position_embeddings, or the first N."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim))
    if num_inv_freq is not None:
        if not 0 < num_inv_freq <= head_dim // 2:
            raise ValueError(f"fope_num_inv_freq must be in [1, {head_dim // 2}], got {num_inv_freq}")
        return inv_freq[:num_inv_freq]
    return inv_freq[inv_freq > 2.0 * math.pi / max_position_embeddings]


def fope_init_coefficients(num_kv_heads: int, num_freq: int, init_factor: float, sep_head: bool,
                           seed: int = FOPE_INIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos_coef, sin_coef): identity + xavier-normal noise with gain `init_factor`."""
    shape = (num_kv_heads, num_freq, num_freq) if sep_head else (num_freq, num_freq)
    gen = torch.Generator().manual_seed(seed)
    sin_coef, cos_coef = torch.empty(shape, device="cpu"), torch.empty(shape, device="cpu")  # (also under meta)
    torch.nn.init.xavier_normal_(sin_coef, gain=init_factor, generator=gen)  # same draw order as the release
    torch.nn.init.xavier_normal_(cos_coef, gain=init_factor, generator=gen)
    eye = torch.eye(num_freq, device="cpu")
    return cos_coef + eye, sin_coef + eye


def fope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, cos_coef: torch.Tensor, sin_coef: torch.Tensor,
                 head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [...] -> cos, sin [..., H_kv, head_dim] (sep_head coefficients) or [..., head_dim]."""
    angles = positions.float()[..., None] * inv_freq.float().to(positions.device)  # [..., D]
    c, s = angles.cos(), angles.sin()
    if cos_coef.dim() == 3:
        cos = torch.einsum("...m,hmd->...hd", c, cos_coef.float())
        sin = torch.einsum("...m,hmd->...hd", s, sin_coef.float())
    else:
        cos = c @ cos_coef.float()
        sin = s @ sin_coef.float()
    pad = head_dim // 2 - cos.shape[-1]
    cos = torch.nn.functional.pad(cos, (0, pad), value=1.0)
    sin = torch.nn.functional.pad(sin, (0, pad), value=1.0)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_fope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [s, b, heads, hd]; cos/sin [s, b or 1, kv_heads or 1, hd] (or [s, b|1, hd]); heads grouped by KV head."""
    if cos.dim() == 3:
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    reps = x.shape[2] // cos.shape[2]
    if reps > 1:
        cos, sin = cos.repeat_interleave(reps, dim=2), sin.repeat_interleave(reps, dim=2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class FourierPositionEmbedding(torch.nn.Module):
    """The FoPE mixing coefficients of one attention layer (local KV heads of this TP rank)."""

    def __init__(self, config, options: FoPEOptions):
        super().__init__()
        head_dim = config.kv_channels
        self.head_dim = head_dim
        self.sep_head = options.sep_head
        inv_freq = fope_inv_freq(head_dim, options.rotary_base, options.max_position_embeddings, options.num_inv_freq)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        cos_coef, sin_coef = fope_init_coefficients(config.num_query_groups, inv_freq.numel(), options.init_factor,
                                                    options.sep_head)
        tp = config.tensor_model_parallel_size
        if options.sep_head and tp > 1:
            local = config.num_query_groups // tp
            rank = parallel_state.get_tensor_model_parallel_rank()
            cos_coef, sin_coef = (t[rank * local:(rank + 1) * local].contiguous() for t in (cos_coef, sin_coef))
        dtype = config.params_dtype
        self.cos_coef = torch.nn.Parameter(cos_coef.to(dtype), requires_grad=options.learnable)
        self.sin_coef = torch.nn.Parameter(sin_coef.to(dtype), requires_grad=options.learnable)
        for p in (self.cos_coef, self.sin_coef):
            set_tensor_model_parallel_attributes(p, is_parallel=options.sep_head and tp > 1, dim=0, stride=1)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fope_cos_sin(positions, self.inv_freq, self.cos_coef, self.sin_coef, self.head_dim)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        state = self.state_dict(prefix="", keep_vars=True)
        axis = {"cos_coef": 0, "sin_coef": 0} if self.sep_head else {}
        return make_sharded_tensors_for_checkpoint(state, prefix, axis, sharded_offsets)


_ATTN_SIG = inspect.signature(SelfAttention.forward)


def _positions_from_rotary(rotary_pos_emb, packed_seq_params, inference_context) -> Optional[torch.Tensor]:
    """Token positions [s, 1] (one table for the batch) or [s, b] (per-row tables, e.g. left-padded rows) from
    Megatron's RoPE angle table (column 0 is 1.0 * t)."""
    if rotary_pos_emb is None:
        return None
    table = rotary_pos_emb[0] if isinstance(rotary_pos_emb, tuple) else rotary_pos_emb
    positions = table[..., 0].reshape(table.shape[0], -1)  # [s, 1 or b]
    if packed_seq_params is not None and packed_seq_params.qkv_format == "thd":
        cu = packed_seq_params.cu_seqlens_q_padded
        cu = packed_seq_params.cu_seqlens_q if cu is None else cu
        total = int(cu[-1])
        idx = torch.arange(total, device=cu.device)
        doc = torch.searchsorted(cu[1:], idx, right=True)
        return (idx - cu[doc]).to(positions.dtype)[:, None]
    if inference_context is not None:
        if not inference_context.is_static_batching():
            raise NotImplementedError("FoPE supports static-batching inference only")
        return positions  # sliced to the new tokens in `get_query_key_value_tensors`
    return positions


class FoPESelfAttention(SelfAttention):
    """SelfAttention that applies FoPE to query/key right after the QKV projection (+ QK-norm)."""

    def __init__(self, config, submodules, layer_number, attn_mask_type=None, *, fope: FoPEOptions, **kwargs):
        if attn_mask_type is not None:
            kwargs["attn_mask_type"] = attn_mask_type
        super().__init__(config, submodules, layer_number, **kwargs)
        if config.context_parallel_size > 1:
            raise ValueError("FoPE does not support context parallelism yet")
        self.fope = FourierPositionEmbedding(config, fope)
        self._fope_positions = None
        self._fope_offset = 0

    def forward(self, *args, **kwargs):
        bound = _ATTN_SIG.bind(self, *args, **kwargs)
        arguments = bound.arguments
        context = arguments.get("inference_context") or arguments.get("inference_params")
        self._fope_positions = _positions_from_rotary(arguments.get("rotary_pos_emb"),
                                                      arguments.get("packed_seq_params"), context)
        self._fope_offset = int(context.sequence_len_offset) if context is not None else 0
        arguments["rotary_pos_emb"] = None  # FoPE replaces RoPE
        try:
            return super().forward(*bound.args[1:], **bound.kwargs)
        finally:
            self._fope_positions = None

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, output_gate=False, split_qkv=True):
        if not split_qkv:
            raise ValueError("FoPE needs split QKV (fused_single_qkv_rope must be off)")
        out = super().get_query_key_value_tensors(hidden_states, key_value_states, output_gate=output_gate,
                                                  split_qkv=split_qkv)
        query, key = out[0], out[1]
        seq = query.shape[0]
        positions = self._fope_positions
        if positions is None:
            positions = (torch.arange(seq, device=query.device, dtype=torch.float32) + self._fope_offset)[:, None]
        elif positions.shape[0] != seq:
            positions = positions[self._fope_offset:self._fope_offset + seq]
        cos, sin = self.fope(positions.to(query.device))  # [s, 1 or b, H_kv_local, hd]: broadcast over the batch
        return (apply_fope(query, cos, sin), apply_fope(key, cos, sin), *out[2:])
