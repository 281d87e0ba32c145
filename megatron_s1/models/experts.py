"""Routed experts as two grouped GEMMs whose per-expert row counts stay on the GPU (`model.moe_experts=grouped_mm`).

Why not TE's GroupedLinear for BF16: it takes the per-expert token counts as a host list, so each MoE layer first
waits for a device->host copy of the counts (the dispatcher's stream sync) and then splits, launches and
bookkeeps every expert from Python. On the H100 probe (32 local experts, docs/performance.md) that host work was
~13 ms per layer and micro-batch, more than the layer's GPU time, so the step was host-bound. Here the counts
become device offsets for `torch.nn.functional.grouped_mm` (one CUTLASS kernel per GEMM, forward and backward),
and with EP=1 / expert-TP=1 the dispatcher never copies them to the host (`specialise_dispatchers`).

FP8 (`model.moe_experts=grouped_mm_fp8`, issue 24): the same module with the two forward GEMMs and the input-gradient
GEMMs in FP8 e4m3 through `torch._scaled_grouped_mm` with rowwise float32 scales (per token row of the activations,
per output row of each expert's weight), still with device-side offsets, so no host sync. The weight gradients stay
BF16 (`grouped_mm` grouped along the token axis). Quantised weights (both orientations) are cached per weight
version, so all micro-batches of one optimizer step reuse them. Otherwise `auto` picks TE's GroupedLinear for FP8.

Checkpoints: the weights of all local experts are one [experts, out, in] tensor per linear, stored under the same
sharded keys and global shapes as Megatron's SequentialMLP / TEGroupedMLP (`...experts.linear_fc1.weight`, one
expert axis), so a checkpoint loads into any of the three implementations.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from megatron.core.dist_checkpointing.mapping import ShardedTensor
from megatron.core.fusions.fused_bias_swiglu import weighted_bias_swiglu_impl
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_expert_parallel_rng_tracker_name
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

_grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm


_E4M3_MAX = 448.0


def _rowwise_e4m3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t [..., K] -> (e4m3 tensor, float32 scale per row [...]) with t ~= q * scale."""
    amax = t.abs().amax(dim=-1).float().clamp_min(1e-12)
    scale = amax / _E4M3_MAX
    q = (t.float() / scale.unsqueeze(-1)).clamp(-_E4M3_MAX, _E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


# Weights only change between forward-backward schedules (optimizer step, checkpoint load), but Megatron's optimizer
# writes them through `.data`, which does not bump the parameter's version counter. So the training loop opens a new
# "weight generation" at the start of every schedule (`new_weight_generation`) and a cache hit needs the same
# generation; callers that never open one (RL, inference, tests) get fresh quantisation on every forward.
_GENERATION = {"managed": False, "value": 0}


def new_weight_generation() -> None:
    """Invalidate every cached FP8 expert weight; the cache is then reused until the next call."""
    _GENERATION["managed"] = True
    _GENERATION["value"] += 1


class _FP8WeightCache:
    """Rowwise-FP8 copies of one [E, N, K] weight for the forward ([E, K, N] column-major operand, scales [E, N]) and
    the input gradient ([E, N, K] column-major operand, scales [E, K]); rebuilt when the weight changes (optimizer
    step bumps its version), reused across the micro-batches in between."""

    def __init__(self):
        self.key = None
        self.fwd = self.bwd = None

    def get(self, weight: torch.Tensor):
        key = (weight.data_ptr(), weight._version, _GENERATION["value"])
        if key != self.key or not _GENERATION["managed"]:
            with torch.no_grad():
                q, sc = _rowwise_e4m3(weight)  # over K, per (e, n)
                self.fwd = (q.transpose(1, 2), sc)  # [E, K, N], column-major in the last two dims
                qt, sct = _rowwise_e4m3(weight.transpose(1, 2))  # over N, per (e, k)
                self.bwd = (qt.contiguous().transpose(1, 2), sct.contiguous())  # [E, N, K] column-major
            self.key = key
        return self.fwd, self.bwd


class _FP8GroupedLinear(torch.autograd.Function):
    """y[rows of e] = x[rows of e] @ W[e]^T with FP8 forward / input-gradient GEMMs, BF16 weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, offsets, cache):
        (wq, ws), bwd = cache.get(weight)
        xq, xs = _rowwise_e4m3(x)
        out = torch._scaled_grouped_mm(xq, wq, xs, ws, offs=offsets, out_dtype=x.dtype)
        ctx.save_for_backward(x, offsets)
        ctx.bwd = bwd
        ctx.weight = weight
        return out

    @staticmethod
    def backward(ctx, dy):
        x, offsets = ctx.saved_tensors
        wtq, wts = ctx.bwd
        dy = dy.contiguous()
        dyq, dys = _rowwise_e4m3(dy)
        dx = torch._scaled_grouped_mm(dyq, wtq, dys, wts, offs=offsets, out_dtype=dy.dtype)
        return dx, _weight_grad(ctx.weight, dy, x, offsets), None, None


class _BF16GroupedLinear(torch.autograd.Function):
    """y[rows of e] = x[rows of e] @ W[e]^T through grouped_mm; autograd's own backward unless the weight
    accumulates its gradient into main_grad (then the weight gradient is ours, `_weight_grad`)."""

    @staticmethod
    def forward(ctx, x, weight, offsets):
        ctx.save_for_backward(x, weight, offsets)
        ctx.weight = weight
        return _grouped_mm(x, weight.transpose(1, 2), offs=offsets)

    @staticmethod
    def backward(ctx, dy):
        x, weight, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _grouped_mm(dy, weight, offs=offsets)
        return dx, _weight_grad(ctx.weight, dy, x, offsets), None


def _weight_grad(weight: torch.Tensor, dy: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor):
    """dW[e] = dy[rows of e]^T @ x[rows of e]: added straight into weight.main_grad when the weight was switched to
    fused accumulation (`enable_fused_wgrad_accumulation`; then autograd gets no gradient and Megatron's DDP hook
    skips its add), else returned in the weight's dtype."""
    if getattr(weight, "fuse_wgrad_accumulation", False):
        from megatron_s1.models.grouped_wgrad import grouped_wgrad_into

        grouped_wgrad_into(weight.main_grad, dy, x, offsets)
        weight.grad_added_to_main_grad = True
        return None
    return _grouped_mm(dy.t(), x, offs=offsets).to(weight.dtype)  # [E, N, K], grouped along the token axis


class _GroupedWeight(torch.nn.Module):
    """Holds one [experts, out_features, in_features] weight, so state-dict names read `linear_fc1.weight`."""

    def __init__(self, num_experts: int, out_features: int, in_features: int, dtype, device):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_experts, out_features, in_features, dtype=dtype,
                                                     device=device))


class GroupedMMExperts(MegatronModule):
    """Drop-in for Megatron's experts module (same constructor and forward contract as TEGroupedMLP)."""

    fp8 = False  # GroupedMMFP8Experts: rowwise-FP8 GEMMs

    def __init__(self, num_local_experts: int, config, submodules=None, pg_collection=None, name=None):
        super().__init__(config=config)
        self._fp8_caches = (_FP8WeightCache(), _FP8WeightCache())
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        self.ep_group = pg_collection.ep
        self.expt_tp_group = pg_collection.expt_tp
        self.expt_dp_group = pg_collection.expt_dp
        if self.expt_tp_group.size() > 1:
            raise ValueError("model.moe_experts=grouped_mm needs expert tensor parallel size 1 "
                             "(parallel.expert_tensor=1); use model.moe_experts=te for expert TP")
        if config.add_bias_linear or config.moe_apply_probs_on_input:
            raise ValueError("model.moe_experts=grouped_mm supports bias-free experts with router probabilities "
                             "applied after the activation (the Qwen3-MoE layout); use model.moe_experts=te")
        self.num_local_experts = num_local_experts
        ffn = config.moe_ffn_hidden_size
        fc1_out = 2 * ffn if config.gated_linear_unit else ffn
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.linear_fc1 = _GroupedWeight(num_local_experts, fc1_out, config.hidden_size, config.params_dtype, device)
        self.linear_fc2 = _GroupedWeight(num_local_experts, config.hidden_size, ffn, config.params_dtype, device)
        if config.perform_initialization:
            with get_cuda_rng_tracker().fork(get_expert_parallel_rng_tracker_name()):
                for e in range(num_local_experts):
                    config.init_method(self.linear_fc1.weight.data[e])
                    config.output_layer_init_method(self.linear_fc2.weight.data[e])
        # Gradients reduce over the expert-data-parallel group when experts are split across ranks (as TE's
        # expert linears); fc1 is column-, fc2 row-partitioned in Megatron's convention.
        use_expert_groups = config.expert_model_parallel_size > 1 or (
            config.expert_tensor_parallel_size != config.tensor_model_parallel_size)
        for param, partition_dim in ((self.linear_fc1.weight, 1), (self.linear_fc2.weight, 2)):
            param.allreduce = not use_expert_groups
            param.tensor_model_parallel = True
            param.partition_dim = partition_dim
            param.partition_stride = 1

    def activation(self, fc1_output: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """act(fc1) * router probability, as TEGroupedMLP computes it (fused SwiGLU kernel when enabled)."""
        cfg = self.config
        if cfg.gated_linear_unit and cfg.activation_func is F.silu and cfg.bias_activation_fusion:
            return weighted_bias_swiglu_impl(fc1_output, None, probs, cfg.activation_func_fp8_input_store)
        if cfg.gated_linear_unit:
            gate, linear = torch.chunk(fc1_output, 2, dim=-1)
            hidden = cfg.activation_func(gate) * linear
        else:
            hidden = cfg.activation_func(fc1_output)
        return (hidden * probs).to(fc1_output.dtype)

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        x = permuted_local_hidden_states
        counts = torch.as_tensor(tokens_per_expert).to(device=x.device, non_blocking=True)
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)
        if self.fp8:
            fc1_output = _FP8GroupedLinear.apply(x, self.linear_fc1.weight, offsets, self._fp8_caches[0])
            hidden = self.activation(fc1_output, permuted_probs.unsqueeze(-1))
            return _FP8GroupedLinear.apply(hidden, self.linear_fc2.weight, offsets, self._fp8_caches[1]), None
        if self.fuse_wgrad_accumulation:
            fc1_output = _BF16GroupedLinear.apply(x, self.linear_fc1.weight, offsets)
            hidden = self.activation(fc1_output, permuted_probs.unsqueeze(-1))
            return _BF16GroupedLinear.apply(hidden, self.linear_fc2.weight, offsets), None
        fc1_output = _grouped_mm(x, self.linear_fc1.weight.transpose(1, 2), offs=offsets)
        hidden = self.activation(fc1_output, permuted_probs.unsqueeze(-1))
        return _grouped_mm(hidden, self.linear_fc2.weight.transpose(1, 2), offs=offsets), None

    @property
    def fuse_wgrad_accumulation(self) -> bool:
        return getattr(self.linear_fc1.weight, "fuse_wgrad_accumulation", False)

    def enable_fused_wgrad_accumulation(self) -> bool:
        """Accumulate both weight gradients straight into their fp32 main_grad (models/grouped_wgrad.py). Needs
        Megatron DDP's main_grad on every weight and a backend Triton runs on (CUDA, or the interpreter); returns
        whether it was switched on."""
        weights = (self.linear_fc1.weight, self.linear_fc2.weight)
        runs = all(w.is_cuda for w in weights) or os.environ.get("TRITON_INTERPRET") == "1"
        if not runs or not all(getattr(w, "main_grad", None) is not None and w.main_grad.dtype == torch.float32
                               for w in weights):
            return False
        for w in weights:
            w.fuse_wgrad_accumulation = True
        return True

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        """The SequentialMLP layout: key `{prefix}experts.linear_fcN.weight`, experts on the axis after the layers."""
        if (metadata or {}).get("singleton_local_shards"):
            raise NotImplementedError("model.moe_experts=grouped_mm does not write singleton_local_shards checkpoints")
        expert_axis = len(sharded_offsets)
        replica_id = (0, self.expt_tp_group.rank(), self.expt_dp_group.rank())
        out = {}
        for name in ("linear_fc1", "linear_fc2"):
            weight = getattr(self, name).weight
            out[f"{prefix}{name}.weight"] = ShardedTensor.from_rank_offsets(
                f"{prefix}experts.{name}.weight", weight, *sharded_offsets,
                (expert_axis, self.ep_group.rank(), self.ep_group.size()),
                replica_id=replica_id, prepend_axis_num=len(sharded_offsets))
        return out


class GroupedMMFP8Experts(GroupedMMExperts):
    """GroupedMMExperts with rowwise-FP8 GEMMs (`model.moe_experts=grouped_mm_fp8`); same checkpoint layout."""

    fp8 = True


class DeviceCountsAlltoAllDispatcher(MoEAlltoAllTokenDispatcher):
    """Megatron's all-to-all dispatcher minus its device->host copy of the per-expert counts.

    Only installed where nothing on the host needs them: no expert/tensor parallel all-to-all splits, a static
    permuted size (dropless, no quantisation padding) and fused permutation (whose chunk sort reads device counts).
    """

    def _maybe_dtoh_and_synchronize(self, point, tokens_per_expert=None):
        return tokens_per_expert


class PaddedRoutingAlltoAllDispatcher(MoEAlltoAllTokenDispatcher):
    """Megatron's all-to-all dispatcher, padding a copy of the routing map (`model.moe_router_padding_fp8`).

    megatron-core 0.19's ``pad_routing_map`` writes the padding into the map it is given, which is the router's
    output that autograd saved for the router's backward: the first backward then fails ("modified by an inplace
    operation"). The copy is [tokens, experts] booleans, small next to the activations.
    """

    def dispatch_preprocess(self, hidden_states, routing_map, probs):
        return super().dispatch_preprocess(hidden_states, routing_map.clone(), probs)


def specialise_dispatchers(model: torch.nn.Module) -> int:
    """Swap Megatron's all-to-all dispatcher for ours where one applies; returns how many were swapped:
    PaddedRoutingAlltoAllDispatcher where the router pads for FP8, DeviceCountsAlltoAllDispatcher on grouped_mm
    experts where nothing on the host needs the per-expert counts."""
    swapped = 0
    for module in model.modules():
        dispatcher = getattr(module, "token_dispatcher", None)
        if type(dispatcher) is not MoEAlltoAllTokenDispatcher:
            continue
        cfg = dispatcher.config
        if cfg.moe_router_padding_for_quantization:
            dispatcher.__class__ = PaddedRoutingAlltoAllDispatcher
        elif (isinstance(module.experts, GroupedMMExperts) and dispatcher.ep_size == 1 and dispatcher.tp_size == 1
              and not dispatcher.drop_and_pad and cfg.moe_expert_capacity_factor is None
              and (cfg.moe_permute_fusion or dispatcher.num_local_experts == 1)):
            dispatcher.__class__ = DeviceCountsAlltoAllDispatcher
        else:
            continue
        swapped += 1
    return swapped
