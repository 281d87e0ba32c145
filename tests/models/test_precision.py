"""Per-module numerics options (megatron_s1/models/precision.py) on CPU; the FP8 parts run in tests/gpu."""
import pytest
import torch

from megatron_s1.config import ConfigError, load_config
from megatron_s1.models.language import build_language_model, build_transformer_config
from megatron_s1.models.precision import is_routed_expert, use_fp32_output_layer, validate_precision_options
from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything


@pytest.fixture(scope="module")
def single_process():
    init_distributed()
    yield


@pytest.mark.parametrize("overrides, message", [
    (["model.fp8_modules=attention"], "model.fp8_modules must be one of all, experts"),
    (["model.fp8_modules=experts"], "model.fp8 is null"),
    (["model.fp8_modules=experts", "model.fp8=blockwise", "model.preset=tiny-dense"], "needs an MoE model"),
    (["model.fp8_param=true"], "model.fp8_param=true needs an FP8 recipe"),
    (["model.moe_router_padding_fp8=true", "model.num_moe_experts=4"], "moe_router_padding_fp8=true needs an FP8"),
    (["model.moe_router_padding_fp8=true", "model.fp8=blockwise"], "the model is dense"),
    (["model.fp8_param=true", "model.fp8=blockwise", "model.fp8_modules=experts", "model.num_moe_experts=4"],
     "use model.fp8_modules=all"),
])
def test_fp8_module_selection_errors(overrides, message):
    cfg = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        validate_precision_options(cfg.model)


def test_routed_expert_names():
    assert is_routed_expert("decoder.layers.0.mlp.experts.linear_fc1")
    assert is_routed_expert("language_model.decoder.layers.3.mlp.experts.local_experts.1.linear_fc2")
    assert not is_routed_expert("decoder.layers.0.mlp.shared_experts.linear_fc1")
    assert not is_routed_expert("decoder.layers.0.self_attention.linear_qkv")
    assert not is_routed_expert("decoder.layers.0.mlp.router")


def test_fp32_lm_head_logits_and_grads(single_process):
    """bf16 model: the fp32 head gives logits equal to an fp32 matmul of the final hidden states with the weight,
    and the bf16 weight still receives its gradient."""
    cfg = load_config(None, ["model.preset=tiny-dense", "model.params_dtype=bf16"])
    initialize_model_parallel(cfg)
    seed_everything(0)
    model = build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)
    hidden = {}
    model.decoder.final_layernorm.register_forward_hook(lambda _m, _i, out: hidden.setdefault("h", out))
    assert use_fp32_output_layer(model)
    wrapped = model.output_layer.forward
    assert use_fp32_output_layer(model) and model.output_layer.forward is wrapped  # idempotent: wraps once
    b, s = 2, 8
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s))
    positions = torch.arange(s).expand(b, s)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
    logits = model(tokens, positions, causal)
    assert logits.dtype == torch.float32
    expected = (hidden["h"].float() @ model.output_layer.weight.float().t()).transpose(0, 1)
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-6)
    # A bf16 head would round the logits; the fp32 head must not.
    assert not torch.equal(logits, expected.to(torch.bfloat16).float())
    logits.float().logsumexp(-1).mean().backward()
    grad = model.output_layer.weight.grad
    assert grad is not None and grad.dtype == torch.bfloat16 and grad.abs().sum() > 0


def test_fp32_lm_head_config_switch(single_process):
    cfg = load_config(None, ["model.preset=tiny-moe", "model.params_dtype=bf16", "model.fp32_lm_head=true"])
    initialize_model_parallel(cfg)
    seed_everything(0)
    model = build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)
    s = 8
    logits = model(torch.zeros(1, s, dtype=torch.long), torch.arange(s)[None],
                   torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None])
    assert logits.dtype == torch.float32


def test_fp8_switches_accepted_with_a_recipe():
    cfg = load_config(None, ["model.fp8=blockwise", "model.fp8_param=true", "model.moe_router_padding_fp8=true",
                             "model.num_moe_experts=4"])
    validate_precision_options(cfg.model)  # no error: both switches have a recipe and an MoE model


def test_moe_only_recompute(single_process):
    cfg = load_config(None, ["model.num_moe_experts=4", "model.recompute=moe"])
    config = build_transformer_config(cfg)
    assert config.recompute_granularity == "selective" and config.recompute_modules == ["moe"]
    # The plain selective option keeps Megatron's default (core attention only).
    config = build_transformer_config(load_config(None, ["model.num_moe_experts=4", "model.recompute=selective"]))
    assert config.recompute_modules == ["core_attn"]
    with pytest.raises(ConfigError, match="model is dense"):
        build_transformer_config(load_config(None, ["model.recompute=moe"]))
    with pytest.raises(ConfigError, match="selective, full or moe"):
        build_transformer_config(load_config(None, ["model.recompute=attention"]))
