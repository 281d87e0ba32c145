"""Forward/backward of the tiny presets with real Megatron-Core modules (local spec, CPU, gloo world of 1)."""
import pytest
import torch

from megatron_s1.config import load_config
from megatron_s1.models.language import build_language_model, build_transformer_config
from megatron_s1.models.norms import RMSNorm
from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything


@pytest.fixture(scope="module")
def single_process():
    init_distributed()
    yield


def _build(preset, single_process):
    cfg = load_config(None, [f"model.preset={preset}", "model.params_dtype=fp32"])
    initialize_model_parallel(cfg)
    seed_everything(0)
    config = build_transformer_config(cfg)
    return cfg, build_language_model(cfg, config, pre_process=True, post_process=True)


@pytest.mark.parametrize("preset", ["tiny-dense", "tiny-moe"])
def test_forward_backward(preset, single_process):
    cfg, model = _build(preset, single_process)
    b, s = 2, 16
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s))
    positions = torch.arange(s).expand(b, s)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
    logits = model(tokens, positions, causal)
    assert logits.shape == (b, s, cfg.model.vocab_size)
    per_token = model(tokens, positions, causal, labels=tokens)
    assert per_token.shape == (b, s)
    # Untrained model: cross-entropy near log(vocab).
    assert abs(per_token.mean().item() - torch.log(torch.tensor(float(cfg.model.vocab_size))).item()) < 0.5
    per_token.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Causality: changing the last token leaves earlier logits untouched.
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % cfg.model.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, positions, causal)[:, :-1], model(changed, positions, causal)[:, :-1])


def test_qwen3_structure(single_process):
    cfg, model = _build("tiny-moe", single_process)
    names = dict(model.named_parameters())
    layer = "decoder.layers.0."
    assert names[layer + "self_attention.linear_qkv.weight"].shape == ((4 + 2 * 2) * 16, 64)  # GQA fused QKV
    assert layer + "self_attention.q_layernorm.weight" in names  # QK-norm
    assert names[layer + "mlp.router.weight"].shape == (4, 64)
    assert names[layer + "mlp.experts.local_experts.0.linear_fc1.weight"].shape == (2 * 64, 64)  # gate+up
    assert "output_layer.weight" in names  # untied embeddings
    assert not any("bias" in n for n in names)
    assert isinstance(model.decoder.final_layernorm, RMSNorm)


def test_rmsnorm_matches_formula():
    config = load_config(None, ["model.preset=tiny-dense"])
    from megatron_s1.models.language import build_transformer_config as btc

    norm = RMSNorm(btc(config), hidden_size=4, eps=1e-6)
    norm.weight.data = torch.tensor([1.0, 2.0, 0.5, 1.0])
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    rms = (30.0 / 4 + 1e-6) ** 0.5  # sqrt(mean(x^2)+eps)
    expected = torch.tensor([[1 / rms, 4 / rms, 1.5 / rms, 4 / rms]])
    torch.testing.assert_close(norm(x), expected)
