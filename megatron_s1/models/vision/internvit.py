"""InternViT (6B / 300M) and the InternVL MLP projector as Megatron modules with tensor parallelism.

Layout (per layer, pre-norm with layer scale, as InternViT):
    x = x + drop_path(ls1 * attn(norm1(x)));   x = x + drop_path(ls2 * mlp(norm2(x)))
Attention: `linear_qkv` is a ColumnParallelLinear whose output rows follow Megatron's per-head interleaved
[q_h, k_h, v_h] layout; `linear_proj` a RowParallelLinear. The head count is padded to a multiple of the
TP size (25 -> 26 for TP=2, 32 for TP=8); padded heads are masked to exactly zero so the model stays
equal to the unpadded one (their weights get no gradient). QK-norm (InternViT-6B) is an RMSNorm over the
full hidden size: under TP each rank holds some heads, so the sum of squares is all-reduced over the TP
group (forward and backward) and divided by the real, unpadded hidden size.

Parameter names (see docs/multimodal.md for the HF mapping):
    embeddings.class_embedding [1,1,C], embeddings.patch_embedding.{weight,bias}, embeddings.position_embedding
    decoder.layers.{i}.input_layernorm.{weight[,bias]}, .self_attention.linear_qkv.{weight[,bias]},
    .self_attention.{q,k}_layernorm.weight, .self_attention.linear_proj.{weight,bias},
    .pre_mlp_layernorm.{weight[,bias]}, .mlp.linear_fc1.{weight,bias}, .mlp.linear_fc2.{weight,bias}, .ls1, .ls2
Projector: layernorm.{weight,bias}, linear_fc1.{weight,bias}, linear_fc2.{weight,bias}
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint


def padded_num_heads(num_heads: int, tp: int) -> int:
    """Smallest multiple of `tp` that is >= num_heads (InternViT-6B: 25 heads -> 26 at TP=2, 32 at TP=8)."""
    return int(math.ceil(num_heads / tp) * tp)


def build_vision_transformer_config(vcfg, llm_config: TransformerConfig) -> TransformerConfig:
    """Megatron config of the vision tower: the LLM's dtype/TP, but never FP8 and never sequence parallel.

    The vision tower and projector stay in BF16 (or the params dtype) when the LLM runs FP8 GEMMs: this
    config has `fp8=None` and the tower is built from plain Megatron parallel linears, not TE modules.
    """
    tp = llm_config.tensor_model_parallel_size
    if vcfg.hidden_size % vcfg.num_attention_heads:
        raise ValueError(f"vision.hidden_size={vcfg.hidden_size} is not divisible by vision.num_attention_heads="
                         f"{vcfg.num_attention_heads}")
    if vcfg.ffn_hidden_size % tp:
        raise ValueError(f"vision.ffn_hidden_size={vcfg.ffn_hidden_size} is not divisible by parallel.tensor={tp}")
    return TransformerConfig(
        num_layers=vcfg.num_layers,
        hidden_size=vcfg.hidden_size,
        num_attention_heads=padded_num_heads(vcfg.num_attention_heads, tp),
        kv_channels=vcfg.hidden_size // vcfg.num_attention_heads,
        ffn_hidden_size=vcfg.ffn_hidden_size,
        add_bias_linear=True,
        add_qkv_bias=vcfg.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        layernorm_epsilon=vcfg.norm_epsilon,
        init_method_std=0.02,
        params_dtype=llm_config.params_dtype,
        bf16=llm_config.bf16,
        tensor_model_parallel_size=tp,
        sequence_parallel=False,
        use_cpu_initialization=llm_config.use_cpu_initialization,
        gradient_accumulation_fusion=False,
        fp8=None,
    )


class _AllReduceSum(torch.autograd.Function):
    """Sum over the TP group in forward and backward (the statistic feeds every rank's local heads)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class FullHiddenRMSNorm(MegatronModule):
    """RMSNorm over the full hidden size of q (or k) whose heads are split across TP ranks."""

    def __init__(self, config: TransformerConfig, local_size: int, real_size: int, eps: float):
        super().__init__(config=config)
        self.eps = eps
        self.real_size = real_size
        self.weight = torch.nn.Parameter(torch.ones(local_size, dtype=config.params_dtype))
        set_tensor_model_parallel_attributes(self.weight, True, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        sq = x32.pow(2).sum(-1, keepdim=True)
        if self.config.tensor_model_parallel_size > 1:
            sq = _AllReduceSum.apply(sq, parallel_state.get_tensor_model_parallel_group())
        x32 = x32 * torch.rsqrt(sq / self.real_size + self.eps)
        return self.weight * x32.to(dtype)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(state, prefix, {"weight": 0}, sharded_offsets)


class VisionRMSNorm(torch.nn.Module):
    def __init__(self, hidden: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden, dtype=dtype))

    def forward(self, x):
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _norm(kind: str, hidden: int, eps: float, dtype: torch.dtype) -> torch.nn.Module:
    if kind == "RMSNorm":
        return VisionRMSNorm(hidden, eps, dtype)
    if kind == "LayerNorm":
        return torch.nn.LayerNorm(hidden, eps=eps, dtype=dtype)
    raise ValueError(f"vision.normalization must be RMSNorm or LayerNorm, got {kind!r}")


class InternViTAttention(MegatronModule):
    def __init__(self, config: TransformerConfig, real_heads: int, qk_layernorm: bool):
        super().__init__(config=config)
        tp = config.tensor_model_parallel_size
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.head_dim = config.kv_channels
        self.num_heads = config.num_attention_heads
        self.local_heads = self.num_heads // tp
        proj = self.num_heads * self.head_dim
        self.linear_qkv = ColumnParallelLinear(
            config.hidden_size, 3 * proj, config=config, init_method=config.init_method,
            bias=config.add_qkv_bias, gather_output=False)
        self.linear_proj = RowParallelLinear(
            proj, config.hidden_size, config=config, init_method=config.output_layer_init_method, bias=True,
            input_is_parallel=True, skip_bias_add=False)
        first = tp_rank * self.local_heads
        valid = (torch.arange(first, first + self.local_heads, device="cpu") < real_heads).to(config.params_dtype)
        self.register_buffer("head_mask", valid, persistent=False)
        self.padded = bool((valid == 0).any())
        if self.padded:  # start padded heads at exactly zero (they stay so: their outputs are masked)
            with torch.no_grad():
                w = self.linear_qkv.weight.view(self.local_heads, 3 * self.head_dim, -1)
                w.mul_(valid.view(-1, 1, 1).to(w.dtype))
        if qk_layernorm:
            local = self.local_heads * self.head_dim
            real = real_heads * self.head_dim
            self.q_layernorm = FullHiddenRMSNorm(config, local, real, config.layernorm_epsilon)
            self.k_layernorm = FullHiddenRMSNorm(config, local, real, config.layernorm_epsilon)
        else:
            self.q_layernorm = self.k_layernorm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [s, b, h]
        s, b, _ = x.shape
        qkv, _ = self.linear_qkv(x)
        qkv = qkv.view(s, b, self.local_heads, 3 * self.head_dim)
        if self.padded:
            qkv = qkv * self.head_mask.view(1, 1, -1, 1).to(qkv.dtype)
        q, k, v = qkv.split(self.head_dim, dim=-1)
        if self.q_layernorm is not None:
            q = self.q_layernorm(q.reshape(s, b, -1)).view(s, b, self.local_heads, self.head_dim)
            k = self.k_layernorm(k.reshape(s, b, -1)).view(s, b, self.local_heads, self.head_dim)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, heads, s, d]
        out = F.scaled_dot_product_attention(q, k, v)  # bidirectional
        out = out.permute(2, 0, 1, 3).reshape(s, b, self.local_heads * self.head_dim)
        out, _ = self.linear_proj(out)
        return out


class InternViTMLP(MegatronModule):
    """fc1 (column parallel) -> activation (exact GELU by default) -> fc2 (row parallel), with biases."""

    def __init__(self, config: TransformerConfig, activation=F.gelu):
        super().__init__(config=config)
        self.activation = activation
        self.linear_fc1 = ColumnParallelLinear(config.hidden_size, config.ffn_hidden_size, config=config,
                                               init_method=config.init_method, bias=True, gather_output=False)
        self.linear_fc2 = RowParallelLinear(config.ffn_hidden_size, config.hidden_size, config=config,
                                            init_method=config.output_layer_init_method, bias=True,
                                            input_is_parallel=True, skip_bias_add=False)

    def forward(self, x):
        h, _ = self.linear_fc1(x)
        out, _ = self.linear_fc2(self.activation(h))
        return out


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample; x is [s, b, h]."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty(1, x.shape[1], 1).bernoulli_(keep)
    return x * mask / keep


class InternViTLayer(MegatronModule):
    def __init__(self, config: TransformerConfig, vcfg, drop_path_rate: float):
        super().__init__(config=config)
        dtype = config.params_dtype
        self.input_layernorm = _norm(vcfg.normalization, config.hidden_size, vcfg.norm_epsilon, dtype)
        self.self_attention = InternViTAttention(config, vcfg.num_attention_heads, vcfg.qk_layernorm)
        self.pre_mlp_layernorm = _norm(vcfg.normalization, config.hidden_size, vcfg.norm_epsilon, dtype)
        self.mlp = InternViTMLP(config)
        self.ls1 = torch.nn.Parameter(torch.full((config.hidden_size,), vcfg.layer_scale_init, dtype=dtype))
        self.ls2 = torch.nn.Parameter(torch.full((config.hidden_size,), vcfg.layer_scale_init, dtype=dtype))
        self.drop_path_rate = drop_path_rate

    def forward(self, x):
        x = x + drop_path(self.self_attention(self.input_layernorm(x)) * self.ls1, self.drop_path_rate,
                          self.training)
        x = x + drop_path(self.mlp(self.pre_mlp_layernorm(x)) * self.ls2, self.drop_path_rate, self.training)
        return x


class InternViTEmbeddings(MegatronModule):
    """CLS token + Conv2d patch embedding + absolute position embeddings (fixed 448x448 grid)."""

    def __init__(self, config: TransformerConfig, vcfg):
        super().__init__(config=config)
        dtype, hidden = config.params_dtype, config.hidden_size
        if vcfg.image_size % vcfg.patch_size:
            raise ValueError(f"vision.image_size={vcfg.image_size} is not a multiple of vision.patch_size="
                             f"{vcfg.patch_size}")
        self.num_patches = (vcfg.image_size // vcfg.patch_size) ** 2
        self.class_embedding = torch.nn.Parameter(torch.randn(1, 1, hidden, dtype=dtype) * 0.02)
        self.patch_embedding = torch.nn.Conv2d(3, hidden, kernel_size=vcfg.patch_size, stride=vcfg.patch_size,
                                               dtype=dtype)
        self.position_embedding = torch.nn.Parameter(torch.randn(1, self.num_patches + 1, hidden, dtype=dtype) * 0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [n, 3, H, W] -> [n, 1 + patches, C]
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        if x.shape[1] != self.num_patches:
            raise ValueError(f"image tiles must be {int(math.isqrt(self.num_patches))} patches a side; "
                             f"got {x.shape[1]} patches (resize tiles to vision.image_size)")
        cls = self.class_embedding.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding


class VisionLayerStack(MegatronModule):
    """The layers of a vision tower (`layers.{i}.*`), checkpointed with each layer's TP axes."""

    def __init__(self, layers, config):
        super().__init__(config=config)
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        # A plain ModuleList would be checkpointed as replicated tensors (every rank's TP shard under the same
        # global key, i.e. only one shard kept); each layer's own sharded_state_dict marks the TP axes.
        out = {}
        for i, layer in enumerate(self.layers):
            out.update(layer.sharded_state_dict(f"{prefix}layers.{i}.", sharded_offsets, metadata))
        return out


def _internvit_layers(config, vcfg) -> VisionLayerStack:
    rates = torch.linspace(0, vcfg.drop_path_rate, vcfg.num_layers, device="cpu").tolist() if vcfg.num_layers else []
    return VisionLayerStack([InternViTLayer(config, vcfg, r) for r in rates], config)


class InternViTModel(MegatronModule):
    """pixel_values [tiles, 3, 448, 448] -> hidden states [tiles, 1 + 1024, C] (last layer, CLS first)."""

    def __init__(self, config: TransformerConfig, vcfg):
        super().__init__(config=config)
        self.vcfg = vcfg
        self.embeddings = InternViTEmbeddings(config, vcfg)
        self.decoder = _internvit_layers(config, vcfg)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values).transpose(0, 1).contiguous()  # [s, b, C]
        x = self.decoder(x)
        return x.transpose(0, 1)


def pixel_unshuffle(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """[n, H, W, C] -> [n, H*r, W*r, C/r^2], InternVL's channel order.

    Output channel (m * f + k) * C + c of cell (i, j) is input (f*i + m, f*j + k, c), f = 1/r: the row offset
    m is the slowest index, then the column offset k, then the channel (the order InternVL's `pixel_shuffle`
    with ps_version v2 produces, which the projector weights assume).
    """
    n, h, w, c = x.shape
    f = int(round(1 / ratio))
    if h % f or w % f:
        raise ValueError(f"patch grid {h}x{w} is not divisible by 1/downsample_ratio={f}")
    x = x.reshape(n, h // f, f, w // f, f, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // f, w // f, f * f * c)


class VisionProjection(MegatronModule):
    """InternVL `mlp1`: LayerNorm(4C) -> Linear(4C->H) -> GELU -> Linear(H->H), column/row parallel."""

    def __init__(self, config: TransformerConfig, in_size: int, out_size: int):
        super().__init__(config=config)
        self.layernorm = torch.nn.LayerNorm(in_size, eps=1e-5, dtype=config.params_dtype)
        self.linear_fc1 = ColumnParallelLinear(in_size, out_size, config=config, init_method=config.init_method,
                                               bias=True, gather_output=False)
        self.linear_fc2 = RowParallelLinear(out_size, out_size, config=config,
                                            init_method=config.output_layer_init_method, bias=True,
                                            input_is_parallel=True, skip_bias_add=False)

    def forward(self, x):
        h, _ = self.linear_fc1(self.layernorm(x))
        out, _ = self.linear_fc2(F.gelu(h))
        return out


def vision_tokens(vit_hidden: torch.Tensor, ratio: float) -> torch.Tensor:
    """Drop CLS, pixel-unshuffle: [tiles, 1 + g*g, C] -> [tiles, (g*r)^2, C/r^2]."""
    x = vit_hidden[:, 1:, :]
    g = int(math.isqrt(x.shape[1]))
    x = pixel_unshuffle(x.reshape(x.shape[0], g, g, x.shape[2]), ratio)
    return x.reshape(x.shape[0], -1, x.shape[-1])


# ---------------------------------------------------------------- HF <-> Megatron helpers
def hf_qkv_to_megatron(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """HF InternViT `attn.qkv` rows [q(all heads); k; v] -> Megatron per-head [q_h; k_h; v_h] rows."""
    rest = weight.shape[1:]
    w = weight.reshape(3, num_heads, head_dim, *rest).transpose(0, 1)
    return w.reshape(3 * num_heads * head_dim, *rest)


def pad_qkv_heads(weight: torch.Tensor, num_heads: int, padded_heads: int, head_dim: int) -> torch.Tensor:
    """Append zero heads to Megatron-layout qkv rows (or bias); proj columns use `pad_proj_heads`."""
    rest = weight.shape[1:]
    w = weight.reshape(num_heads, 3 * head_dim, *rest)
    pad = w.new_zeros(padded_heads - num_heads, 3 * head_dim, *rest)
    return torch.cat([w, pad]).reshape(padded_heads * 3 * head_dim, *rest)


def pad_head_dim0(weight: torch.Tensor, num_heads: int, padded_heads: int, head_dim: int,
                  fill: float = 0.0) -> torch.Tensor:
    """Pad a per-head vector (QK-norm weight) along dim 0."""
    pad = weight.new_full(((padded_heads - num_heads) * head_dim, *weight.shape[1:]), fill)
    return torch.cat([weight, pad])


def shard_vision_state_dict(full: dict, num_heads: int, head_dim: int, tp_rank: int, tp_size: int) -> dict:
    """Unpadded TP=1 state dict (vision_model.* / vision_projection.* or bare names) -> one TP rank's shard.

    Heads are padded to a multiple of tp_size (zero qkv rows, zero proj columns, unit QK-norm weights),
    then column-parallel weights split on dim 0 and row-parallel weights on dim 1; the rest is replicated.
    """
    padded = padded_num_heads(num_heads, tp_size)
    out = {}
    for name, t in full.items():
        if ".self_attention.linear_qkv." in name:
            t = pad_qkv_heads(t, num_heads, padded, head_dim)
            t = t.chunk(tp_size, 0)[tp_rank]
        elif name.endswith(("q_layernorm.weight", "k_layernorm.weight")):
            t = pad_head_dim0(t, num_heads, padded, head_dim, fill=1.0).chunk(tp_size, 0)[tp_rank]
        elif name.endswith(".self_attention.linear_proj.weight"):
            pad = t.new_zeros(t.shape[0], (padded - num_heads) * head_dim)
            t = torch.cat([t, pad], 1).chunk(tp_size, 1)[tp_rank]
        elif name.endswith(("linear_fc1.weight", "linear_fc1.bias")):
            t = t.chunk(tp_size, 0)[tp_rank]
        elif name.endswith("linear_fc2.weight"):
            t = t.chunk(tp_size, 1)[tp_rank]
        out[name] = t.clone()
    return out
