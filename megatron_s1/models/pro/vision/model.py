"""The Intern-S1-Pro vision tower (a Qwen3-VL style ViT) and its patch merger as Megatron modules.

Input: the flattened patches of any number of images / videos concatenated, `pixel_values` [S, C*T*P*P]
(C channels, T = temporal_patch_size frames, P x P pixels; see `preprocess.py` for the order), and their
grids `grid_thw` [n, 3] (temporal, height, width in patches). Patches of one item come 2x2-merge-block
by merge-block (t, h/m, w/m, m, m), so every group of m*m consecutive rows is one LLM token.

    x = patch_embed(pixels) + interpolate(pos_embed, each item's h x w grid)       (bilinear, see below)
    per layer (pre-norm):  x = x + proj(attn(LN1(x)));  x = x + fc2(gelu_tanh(fc1(LN2(x))))
    out = fc2(gelu(fc1(reshape(LN(x), [S/m^2, m^2*C]))))                            (patch merger)

Attention is bidirectional inside each frame (t, h, w) -> h*w patches, never across frames or items, with
2D rotary embeddings: half of the rotary frequencies turn with the patch row, half with the patch column.
Tensor parallelism: heads split over TP ranks (`linear_qkv` column-parallel with per-head [q_h; k_h; v_h]
rows, `linear_proj` row-parallel), MLP and merger fc1 / fc2 column / row parallel; norms, patch and
position embeddings replicated. The tower is built from a config with fp8=None out of plain Megatron
linears: it stays in the params dtype (BF16) when the language model runs FP8 GEMMs.

Parameter names (HF mapping in `mapping.py`):
    patch_embed.weight [C', C, T, P, P], patch_embed.bias, pos_embed.weight [N*N, C'],
    decoder.layers.{i}.{input_layernorm,pre_mlp_layernorm}.{weight,bias},
    decoder.layers.{i}.self_attention.{linear_qkv,linear_proj}.{weight,bias},
    decoder.layers.{i}.mlp.{linear_fc1,linear_fc2}.{weight,bias},
    merger (`vision_projection.` in the composite): layernorm.{weight,bias}, linear_fc{1,2}.{weight,bias}
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule

from megatron_s1.config.schema import ConfigError
from megatron_s1.models.vision.internvit import InternViTMLP, VisionLayerStack

ROTARY_THETA = 10000.0
LN_EPS = 1e-6  # every LayerNorm of the released tower (blocks and merger)


def build_pro_vision_config(vcfg, llm_config: TransformerConfig) -> TransformerConfig:
    """Megatron config of the tower: the LLM's dtype and TP size; never FP8, never sequence parallel."""
    tp = llm_config.tensor_model_parallel_size
    for name, value in (("num_attention_heads", vcfg.num_attention_heads), ("ffn_hidden_size", vcfg.ffn_hidden_size)):
        if value % tp:
            raise ConfigError(f"vision.{name}={value} is not divisible by parallel.tensor={tp}")
    if vcfg.hidden_size % vcfg.num_attention_heads or (vcfg.hidden_size // vcfg.num_attention_heads) % 4:
        raise ConfigError(f"vision.hidden_size={vcfg.hidden_size} / vision.num_attention_heads="
                          f"{vcfg.num_attention_heads} must be a head size divisible by 4 (2D rotary)")
    if math.isqrt(vcfg.num_position_embeddings) ** 2 != vcfg.num_position_embeddings:
        raise ConfigError(f"vision.num_position_embeddings={vcfg.num_position_embeddings} must be a square")
    return TransformerConfig(
        num_layers=vcfg.num_layers, hidden_size=vcfg.hidden_size, num_attention_heads=vcfg.num_attention_heads,
        kv_channels=vcfg.hidden_size // vcfg.num_attention_heads, ffn_hidden_size=vcfg.ffn_hidden_size,
        add_bias_linear=True, add_qkv_bias=True, hidden_dropout=0.0, attention_dropout=0.0,
        layernorm_epsilon=LN_EPS, init_method_std=0.02, params_dtype=llm_config.params_dtype,
        bf16=llm_config.bf16, tensor_model_parallel_size=tp, sequence_parallel=False,
        use_cpu_initialization=llm_config.use_cpu_initialization, gradient_accumulation_fusion=False, fp8=None)


# ----------------------------------------------------------------------------------------- positions
def patch_rows_cols(grid_thw: torch.Tensor, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch row and column of every patch, in the merge-block order of the patches ([S] each)."""
    rows, cols = [], []
    for t, h, w in grid_thw.tolist():
        r = torch.arange(h).view(h // merge, 1, merge, 1).expand(h // merge, w // merge, merge, merge)
        c = torch.arange(w).view(1, w // merge, 1, merge).expand(h // merge, w // merge, merge, merge)
        rows.append(r.reshape(-1).repeat(t))
        cols.append(c.reshape(-1).repeat(t))
    return torch.cat(rows), torch.cat(cols)


def vision_rotary(grid_thw: torch.Tensor, head_dim: int, merge: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [S, head_dim] of the 2D rotary embedding.

    With F = head_dim / 4 frequencies f_j = theta^(-2j / (head_dim/2)) (j < F), patch (r, c) has the angles
    [r f_0 .. r f_{F-1}, c f_0 .. c f_{F-1}] (head_dim/2 of them), written twice (rotate-half convention).
    """
    rows, cols = patch_rows_cols(grid_thw, merge)
    half = head_dim // 2
    inv_freq = 1.0 / (ROTARY_THETA ** (torch.arange(0, half, 2, dtype=torch.float32) / half))
    angles = torch.cat([rows[:, None].float() * inv_freq, cols[:, None].float() * inv_freq], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def interpolation_weights(size: int, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling of a `side`-long table at `size` points spread evenly from 0 to side - 1:
    (floor index, ceil index, fraction) per point (align-corners interpolation)."""
    pos = torch.linspace(0, side - 1, size)
    low = pos.int()
    high = (low + 1).clamp(max=side - 1)
    return low.long(), high.long(), pos - low


def interpolated_positions(table: torch.Tensor, grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """Learned N x N position table [N*N, C] resampled (bilinear, corners aligned) to each item's h x w patch
    grid, repeated over its t frames, in the merge-block patch order: [S, C]."""
    side = math.isqrt(table.shape[0])
    grid = table.view(side, side, -1)
    out = []
    for t, h, w in grid_thw.tolist():
        h0, h1, dh = interpolation_weights(h, side)
        w0, w1, dw = interpolation_weights(w, side)
        dh, dw = dh.to(table.dtype)[:, None, None], dw.to(table.dtype)[None, :, None]
        top = grid[h0][:, w0] * (1 - dw) + grid[h0][:, w1] * dw
        bottom = grid[h1][:, w0] * (1 - dw) + grid[h1][:, w1] * dw
        pos = top * (1 - dh) + bottom * dh  # [h, w, C]
        pos = pos.view(h // merge, merge, w // merge, merge, -1).permute(0, 2, 1, 3, 4).reshape(h * w, -1)
        out.append(pos.repeat(t, 1))
    return torch.cat(out)


def frame_lengths(grid_thw: torch.Tensor) -> list[int]:
    """Patches per attention segment: every frame of every item attends on its own."""
    return [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


# ------------------------------------------------------------------------------------------- modules
class ProVisionAttention(MegatronModule):
    def __init__(self, config: TransformerConfig):
        super().__init__(config=config)
        self.head_dim = config.kv_channels
        self.local_heads = config.num_attention_heads // config.tensor_model_parallel_size
        width = config.num_attention_heads * self.head_dim
        self.linear_qkv = ColumnParallelLinear(config.hidden_size, 3 * width, config=config,
                                               init_method=config.init_method, bias=True, gather_output=False)
        self.linear_proj = RowParallelLinear(width, config.hidden_size, config=config,
                                             init_method=config.output_layer_init_method, bias=True,
                                             input_is_parallel=True, skip_bias_add=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        s = x.shape[0]  # x: [S, 1, C]
        qkv, _ = self.linear_qkv(x)
        q, k, v = qkv.view(s, self.local_heads, 3 * self.head_dim).split(self.head_dim, dim=-1)
        cos, sin = cos[:, None, :], sin[:, None, :]
        # Rotary in fp32 whatever the params dtype (as the release).
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(v.dtype)
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [heads, S, d]
        out = torch.cat([F.scaled_dot_product_attention(qs, ks, vs) for qs, ks, vs in
                         zip(q.split(lengths, 1), k.split(lengths, 1), v.split(lengths, 1))], dim=1)
        out, _ = self.linear_proj(out.transpose(0, 1).reshape(s, 1, -1))
        return out


class ProVisionLayer(MegatronModule):
    def __init__(self, config: TransformerConfig):
        super().__init__(config=config)
        dtype = config.params_dtype
        self.input_layernorm = torch.nn.LayerNorm(config.hidden_size, eps=LN_EPS, dtype=dtype)
        self.self_attention = ProVisionAttention(config)
        self.pre_mlp_layernorm = torch.nn.LayerNorm(config.hidden_size, eps=LN_EPS, dtype=dtype)
        self.mlp = InternViTMLP(config, activation=lambda h: F.gelu(h, approximate="tanh"))

    def forward(self, x, cos, sin, lengths):
        x = x + self.self_attention(self.input_layernorm(x), cos, sin, lengths)
        return x + self.mlp(self.pre_mlp_layernorm(x))


class ProPatchMerger(MegatronModule):
    """LayerNorm per patch, m*m neighbouring patches concatenated, then Linear -> GELU -> Linear to the LLM
    hidden size (column / row parallel)."""

    def __init__(self, config: TransformerConfig, merge: int, out_size: int):
        super().__init__(config=config)
        self.width = config.hidden_size * merge * merge
        self.layernorm = torch.nn.LayerNorm(config.hidden_size, eps=LN_EPS, dtype=config.params_dtype)
        self.linear_fc1 = ColumnParallelLinear(self.width, self.width, config=config, init_method=config.init_method,
                                               bias=True, gather_output=False)
        self.linear_fc2 = RowParallelLinear(self.width, out_size, config=config,
                                            init_method=config.output_layer_init_method, bias=True,
                                            input_is_parallel=True, skip_bias_add=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [S, 1, C] -> [S / m^2, out]
        x = self.layernorm(x).view(-1, 1, self.width)
        h, _ = self.linear_fc1(x)
        out, _ = self.linear_fc2(F.gelu(h))
        return out.squeeze(1)


class ProVisionModel(MegatronModule):
    """(pixel_values [S, C*T*P*P], grid_thw [n, 3]) -> last-layer patch features [S, 1, C] (the merger,
    `ProPatchMerger`, turns them into LLM embeddings)."""

    def __init__(self, config: TransformerConfig, vcfg, in_channels: int = 3):
        super().__init__(config=config)
        self.merge = vcfg.spatial_merge_size
        dtype, hidden = config.params_dtype, config.hidden_size
        p, t = vcfg.patch_size, vcfg.temporal_patch_size
        self.patch_embed = torch.nn.Module()  # Conv3d with kernel = stride: one linear map per patch
        self.patch_embed.weight = torch.nn.Parameter(torch.empty(hidden, in_channels, t, p, p, dtype=dtype))
        self.patch_embed.bias = torch.nn.Parameter(torch.zeros(hidden, dtype=dtype))
        self.pos_embed = torch.nn.Embedding(vcfg.num_position_embeddings, hidden, dtype=dtype)
        if config.perform_initialization:
            with torch.no_grad():
                self.patch_embed.weight.normal_(0.0, config.init_method_std)
                self.pos_embed.weight.normal_(0.0, config.init_method_std)
        self.decoder = VisionLayerStack([ProVisionLayer(config) for _ in range(vcfg.num_layers)], config)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        grid_thw = grid_thw.cpu()
        if pixel_values.shape[0] != int(grid_thw.prod(-1).sum()):
            raise ValueError(f"vision tower: {pixel_values.shape[0]} patches but grid_thw {grid_thw.tolist()} "
                             f"describes {int(grid_thw.prod(-1).sum())}")
        weight = self.patch_embed.weight
        x = F.linear(pixel_values.to(weight.dtype), weight.flatten(1), self.patch_embed.bias)
        x = x + interpolated_positions(self.pos_embed.weight, grid_thw, self.merge).to(x.device)
        cos, sin = (c.to(x.device) for c in vision_rotary(grid_thw, self.config.kv_channels, self.merge))
        lengths = frame_lengths(grid_thw)
        x = x.unsqueeze(1)
        for layer in self.decoder.layers:
            x = layer(x, cos, sin, lengths)
        return x
