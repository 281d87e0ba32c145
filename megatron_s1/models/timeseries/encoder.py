"""Intern-S1 time-series encoder.

Pipeline for one series x of shape [L, C] sampled at `sr` Hz (after per-channel z-normalisation):
  1. adaptive patching: stride s = adaptive_stride(sr), patch p = 2 s, overlapping windows (zero padded);
  2. per patch and per channel: Conv1d(1->D, k=5) + ReLU + sinusoidal positions + a small post-norm
     transformer; mean over the patch's time steps, then mean over channels -> one D-vector per patch;
  3. frame concat: consecutive pairs of patch vectors concatenated (-> 2D, half the frames);
  4. Whisper-style encoder: Linear(2D -> mel bins), Conv1d(k3) + GELU, Conv1d(k3, stride 2) + GELU,
     learned positions, pre-norm encoder layers (causal attention, as released), LayerNorm, Linear(-> out);
  5. projector: LayerNorm -> Linear(-> LLM hidden) -> GELU -> Linear.
The prompt carries `<|ts|>` + N x `<TS_CONTEXT>` + `<|/ts|>` with N = num_timeseries_tokens(L, sr).

Module names follow the released model (encoder_embed.*, encoder.*, projector.*), see docs/multimodal.md.
The encoder is small and replicated across TP ranks (plain torch modules).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def adaptive_stride(sampling_rate: float) -> int:
    """Patch stride from the sampling rate (Intern-S1 time-series module, the published sigmoid rule):

        stride = floor(160 / (1 + exp(-sr / 100)) ** 6) = floor(160 * sigmoid(sr / 100) ** 6),   patch = 2 * stride

    e.g. sr = 100 Hz -> floor(160 / 1.367879^6) = floor(24.40) = 24; sr -> infinity -> 160; sr = 0 -> 2.
    Clamped to >= 1 (negative rates are meaningless).
    """
    return max(1, int(math.floor(160.0 / (1.0 + math.exp(-float(sampling_rate) / 100.0)) ** 6)))


def num_patches(length: int, sampling_rate: float) -> int:
    """ceil((L - p) / s) + 1 windows; series shorter than p + s are zero-padded to p + s (>= 2 windows, so
    that at least one token survives the frame concat), which extends the released rule to 1-point series."""
    s = adaptive_stride(sampling_rate)
    p = 2 * s
    length = max(int(length), p + s)
    return -(-(length - p) // s) + 1


def num_timeseries_tokens(length: int, sampling_rate: float) -> int:
    """Tokens after frame concat (n // 2) and the stride-2 conv (ceil(n / 2))."""
    n = num_patches(length, sampling_rate) // 2
    return (n + 1) // 2


def znormalize(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel z-normalisation of a [L, C] series (constant channels become zeros)."""
    x = x.float()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    return (x - mean) / (std + eps)


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


class PatchEncoder(nn.Module):
    """encoder_embed: per-patch Conv1d + transformer, mean over time then channels."""

    def __init__(self, tcfg, chunk_patches: int = 4096):
        super().__init__()
        d = tcfg.patch_hidden
        self.conv = nn.Conv1d(1, d, kernel_size=5, stride=1, padding=2)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=tcfg.patch_heads, dim_feedforward=tcfg.patch_ffn,
                                           dropout=0.0)
        self.transformer_encoder = nn.TransformerEncoder(layer, tcfg.patch_layers, enable_nested_tensor=False)
        self.chunk_patches = chunk_patches
        self.dim = d

    def _encode(self, patches: torch.Tensor) -> torch.Tensor:  # [n, p, C] -> [n, D]
        n, p, c = patches.shape
        x = patches.permute(0, 2, 1).reshape(n * c, 1, p)
        x = F.relu(self.conv(x.to(self.conv.weight.dtype))).permute(2, 0, 1)  # [p, n*c, D]
        x = x + sinusoid_table(p, self.dim).to(x).unsqueeze(1)
        x = self.transformer_encoder(x).mean(0)
        return x.reshape(n, c, -1).mean(1)

    def forward(self, series: torch.Tensor, sampling_rate: float) -> torch.Tensor:  # [L, C] -> [n, D]
        if series.dim() == 1:
            series = series.unsqueeze(-1)
        s = adaptive_stride(sampling_rate)
        p = 2 * s
        n = num_patches(series.shape[0], sampling_rate)
        pad = (n - 1) * s + p - series.shape[0]
        series = F.pad(series, (0, 0, 0, pad))
        out = []
        for start in range(0, n, self.chunk_patches):
            idx = torch.arange(start, min(n, start + self.chunk_patches), device=series.device)
            window = (idx * s).unsqueeze(1) + torch.arange(p, device=series.device)
            out.append(self._encode(series[window]))
        frames = torch.cat(out)
        frames = frames[: (frames.shape[0] // 2) * 2]
        return torch.cat([frames[0::2], frames[1::2]], dim=-1)  # frame concat: [n // 2, 2D]


class WhisperAttention(nn.Module):
    def __init__(self, d: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, h):  # [b, t, d]
        b, t, d = h.shape
        q, k, v = (proj(h).view(b, t, self.heads, -1).transpose(1, 2) for proj in (self.q_proj, self.k_proj,
                                                                                     self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(a.transpose(1, 2).reshape(b, t, d))


class WhisperEncoderLayer(nn.Module):
    """Pre-norm Whisper encoder layer (HF Whisper names: self_attn.{q,k,v,out}_proj, fc1/fc2, norms)."""

    def __init__(self, d: int, heads: int, ffn: int, causal: bool):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = WhisperAttention(d, heads, causal)
        self.final_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def forward(self, x):  # [b, t, d]
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperStyleEncoder(nn.Module):
    def __init__(self, tcfg):
        super().__init__()
        d = tcfg.d_model
        self.adapt_in = nn.Linear(tcfg.adapt_in_dim, tcfg.num_mel_bins)
        self.conv1 = nn.Conv1d(tcfg.num_mel_bins, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(tcfg.max_source_positions, d)
        self.layers = nn.ModuleList(WhisperEncoderLayer(d, tcfg.num_heads, tcfg.ffn_hidden_size, tcfg.causal)
                                    for _ in range(tcfg.num_layers))
        self.layer_norm = nn.LayerNorm(d)
        self.adapt_out = nn.Linear(d, tcfg.out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:  # [b, n, 2D] -> [b, ceil(n/2), out]
        x = self.adapt_in(frames).transpose(1, 2)
        x = F.gelu(self.conv2(F.gelu(self.conv1(x)))).transpose(1, 2)
        pos = self.embed_positions.weight
        t = x.shape[1]
        if t > pos.shape[0]:  # positions past the table get none (as the released encoder)
            pos = F.pad(pos, (0, 0, 0, t - pos.shape[0]))
        x = x + pos[:t]
        for layer in self.layers:
            x = layer(x)
        return self.adapt_out(self.layer_norm(x))


class TimeSeriesProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim)
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x):
        return self.linear_2(F.gelu(self.linear_1(self.layer_norm(x))))


class TimeSeriesModel(nn.Module):
    """List of series [L_i, C_i] with sampling rates -> [sum_i N_i, llm_hidden] embeddings (in order)."""

    def __init__(self, tcfg, llm_hidden: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        if tcfg.adapt_in_dim != 2 * tcfg.patch_hidden:
            raise ValueError(f"timeseries.adapt_in_dim={tcfg.adapt_in_dim} must be 2 x timeseries.patch_hidden="
                             f"{2 * tcfg.patch_hidden} (frame concat of two patch vectors)")
        self.encoder_embed = PatchEncoder(tcfg)
        self.encoder = WhisperStyleEncoder(tcfg)
        self.projector = TimeSeriesProjector(tcfg.out_dim, llm_hidden)
        self.to(dtype)

    def forward(self, series: list, sampling_rates: list) -> torch.Tensor:
        outs = []
        for x, sr in zip(series, sampling_rates):
            frames = self.encoder_embed(x, float(sr))
            outs.append(self.projector(self.encoder(frames.unsqueeze(0)))[0])
        if not outs:
            return torch.zeros(0, self.projector.linear_2.out_features, dtype=self.projector.linear_2.weight.dtype)
        return torch.cat(outs)
