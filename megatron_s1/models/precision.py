"""Per-module numerics of the language model: FP8 module selection, FP32 LM head, fused wgrad accumulation.

Intern-S1-Pro trains with FP8 only on the routed-expert GEMMs (the bulk of the FLOPs) and keeps attention,
shared experts and dense MLPs in BF16 and the LM head in FP32 (model.fp8_modules=experts,
model.fp32_lm_head=true). Megatron-Core enters the FP8 autocast around the whole decoder block, so the
selection is made per module: every TransformerEngine linear outside the routed experts runs its forward inside
a nested autocast with FP8 disabled (TE records the choice for the backward of that call).
"""
from __future__ import annotations

import functools

import torch

from megatron_s1.config.schema import ConfigError, ModelConfig

FP8_MODULE_CHOICES = ("all", "experts")


def validate_precision_options(m: ModelConfig) -> None:
    if m.fp8_modules not in FP8_MODULE_CHOICES:
        raise ConfigError(f"model.fp8_modules must be one of {', '.join(FP8_MODULE_CHOICES)}, got {m.fp8_modules!r}")
    for key in ("fp8_param", "moe_router_padding_fp8"):
        if getattr(m, key) and m.fp8 is None:
            raise ConfigError(f"model.{key}=true needs an FP8 recipe but model.fp8 is null; set model.fp8 "
                              "(e.g. blockwise) or drop the option")
    if m.moe_router_padding_fp8 and m.num_moe_experts is None:
        raise ConfigError("model.moe_router_padding_fp8=true pads routed tokens but the model is dense "
                          "(model.num_moe_experts is null)")
    if m.fp8_param and m.fp8_modules == "experts":
        raise ConfigError("model.fp8_param=true stores every TE weight in FP8 but model.fp8_modules=experts runs "
                          "the non-expert GEMMs in BF16; use model.fp8_modules=all or drop model.fp8_param")
    if m.fp8_modules == "experts":
        if m.fp8 is None:
            raise ConfigError("model.fp8_modules=experts selects FP8 modules but model.fp8 is null; set model.fp8 "
                              "(e.g. blockwise) or model.fp8_modules=all")
        if m.num_moe_experts is None:
            raise ConfigError("model.fp8_modules=experts needs an MoE model (model.num_moe_experts); a dense model "
                              "would run no GEMM in FP8")


def is_routed_expert(name: str) -> bool:
    """Module names of routed experts contain '.experts.' (shared experts are '.shared_experts.')."""
    return ".experts." in f".{name}."


def _te_linear_types() -> tuple:
    import transformer_engine.pytorch as te

    return tuple(t for t in (getattr(te, "Linear", None), getattr(te, "LayerNormLinear", None),
                             getattr(te, "GroupedLinear", None), getattr(te, "LayerNormMLP", None)) if t)


def _fp8_disabled(forward):
    import transformer_engine.pytorch as te

    autocast = getattr(te, "autocast", None) or te.fp8_autocast

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with autocast(enabled=False):
            return forward(*args, **kwargs)

    return run


def restrict_fp8_to_experts(model: torch.nn.Module) -> list[str]:
    """Run every TE linear except the routed experts' without FP8; returns the names switched to BF16."""
    switched, te_linears = [], _te_linear_types()
    for name, module in model.named_modules():
        if isinstance(module, te_linears) and not is_routed_expert(name):
            module.forward = _fp8_disabled(module.forward)
            switched.append(name)
    return switched


def use_fp32_output_layer(model: torch.nn.Module) -> bool:
    """Compute the output projection (and so the logits) in fp32 from fp32 copies of the input and weight.

    Works at any TP/SP layout: the column-parallel layer's own forward runs, only on fp32 operands; the weight
    gradient flows back through the cast to the stored (bf16) weight. Idempotent (the training and RL options may
    both ask for it). Returns False on stages without the LM head.
    """
    layer = getattr(model, "output_layer", None)
    if layer is None:
        return False
    if getattr(layer, "fp32_output", False):
        return True
    layer.fp32_output = True
    original = layer.forward

    @functools.wraps(original)
    def forward(input_, weight=None, runtime_gather_output=None):
        w = layer.weight if weight is None else weight
        return original(input_.float(), weight=w.float(), runtime_gather_output=runtime_gather_output)

    layer.forward = forward
    return True


def enable_fused_wgrad_accumulation(model: torch.nn.Module, te_linears: bool = True,
                                    grouped_experts: bool = True) -> int:
    """Let weight gradients accumulate straight into Megatron DDP's fp32 `main_grad` buffers.

    This is Megatron's gradient_accumulation_fusion, restricted to the modules that do it without apex: TE linears
    (`te_linears`) and our grouped_mm experts (`grouped_experts`, models/grouped_wgrad.py). The config flag would also
    turn it on for the non-TE output layer, which needs apex's fused_weight_gradient_mlp_cuda. Call only on models
    wrapped by Megatron DDP (every trainable weight has `main_grad`). Returns the number of modules switched.
    """
    from megatron_s1.models.experts import GroupedMMExperts

    count, te_types = 0, _te_linear_types() if te_linears else ()
    for module in model.modules():
        if te_types and isinstance(module, te_types) and hasattr(module, "fuse_wgrad_accumulation"):
            module.fuse_wgrad_accumulation = True
            count += 1
        elif grouped_experts and isinstance(module, GroupedMMExperts):
            count += module.enable_fused_wgrad_accumulation()
    return count
