"""FoPE (Pro §2.4): hand-computed values, clipping, reduction to RoPE, and the Pro router inside a model."""
import math

import pytest
import torch

from megatron_s1.config import load_config
from megatron_s1.models.language import build_language_model, build_transformer_config
from megatron_s1.models.pro.fope import apply_fope, fope_cos_sin, fope_init_coefficients, fope_inv_freq
from megatron_s1.models.pro.router import ProRouter
from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything


def test_fope_hand_computed():
    # head_dim 4 -> frequencies [1, 100^-0.5 = 0.1]; max length 32 keeps w > 2*pi/32 = 0.196 -> only w = 1.
    inv = fope_inv_freq(4, 100.0, 32)
    torch.testing.assert_close(inv, torch.tensor([1.0]))
    a, b = 0.7, 1.3
    cos, sin = fope_cos_sin(torch.tensor([2.0]), inv, torch.tensor([[a]]), torch.tensor([[b]]), head_dim=4)
    c2, s2 = a * math.cos(2.0), b * math.sin(2.0)
    torch.testing.assert_close(cos, torch.tensor([[c2, 1.0, c2, 1.0]]))  # clipped frequency: cos = sin = 1
    torch.testing.assert_close(sin, torch.tensor([[s2, 1.0, s2, 1.0]]))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4)
    y = apply_fope(x, cos.view(1, 1, 4), sin.view(1, 1, 4)).flatten()
    expected = [1 * c2 - 3 * s2, 2 - 4, 3 * c2 + 1 * s2, 4 + 2]
    torch.testing.assert_close(y, torch.tensor(expected))


def test_pro_clipping_and_init():
    # Intern-S1-Pro: head_dim 128, theta 5e6, 262144 positions -> 45 of 64 frequencies are kept.
    assert fope_inv_freq(128, 5e6, 262144).numel() == 45
    cos_c, sin_c = fope_init_coefficients(4, 45, 0.5, sep_head=True)
    assert cos_c.shape == sin_c.shape == (4, 45, 45) and not torch.equal(cos_c, sin_c)
    eye_c, _ = fope_init_coefficients(4, 45, 0.0, sep_head=True)
    assert torch.equal(eye_c, torch.eye(45).expand(4, 45, 45))


def test_identity_fope_is_rope():
    # Megatron RoPE (rotate-half) at positions t vs FoPE with identity mixing and all frequencies kept.
    hd, s = 16, 7
    inv = fope_inv_freq(hd, 10_000.0, 512, num_inv_freq=hd // 2)
    eye = torch.eye(hd // 2).expand(2, hd // 2, hd // 2)
    cos, sin = fope_cos_sin(torch.arange(s).float(), inv, eye, eye, hd)  # [s, 2, hd]
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    rope_inv = 1.0 / (10_000 ** (torch.arange(0, hd, 2).float() / hd))
    angles = torch.outer(torch.arange(s).float(), rope_inv)
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]  # Megatron's RoPE table [s, 1, 1, hd]
    x = torch.randn(s, 3, 4, hd)  # 4 heads over 2 KV heads
    torch.testing.assert_close(apply_fope(x, cos.unsqueeze(1), sin.unsqueeze(1)), _apply_rotary_pos_emb_bshd(x, freqs))


@pytest.fixture(scope="module")
def single_process():
    init_distributed()
    yield


def _model(overrides):
    cfg = load_config(None, ["model.params_dtype=fp32", *overrides])
    initialize_model_parallel(cfg)
    seed_everything(0)
    return cfg, build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)


def _inputs(cfg, b=2, s=16):
    torch.manual_seed(1)
    tokens = torch.randint(0, cfg.model.vocab_size, (b, s))
    return tokens, torch.arange(s).expand(b, s), torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]


def test_identity_fope_model_equals_rope_model(single_process):
    _, rope = _model(["model.preset=tiny-moe"])
    cfg, fope = _model(["model.preset=tiny-moe", "model.position_embedding_type=fope", "model.fope_init_factor=0",
                        "model.fope_num_inv_freq=8"])
    missing, unexpected = fope.load_state_dict(rope.state_dict(), strict=False)
    assert not unexpected and all("fope" in k for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(fope(*_inputs(cfg)), rope(*_inputs(cfg)))
    # With the Pro initialisation (random mixing, clipping) the output differs.
    _, pro = _model(["model.preset=tiny-moe", "model.position_embedding_type=fope"])
    pro.load_state_dict(rope.state_dict(), strict=False)
    with torch.no_grad():
        assert (pro(*_inputs(cfg)) - rope(*_inputs(cfg))).abs().max() > 1e-3


def test_pro_router_in_model(single_process):
    """STE: same forward as plain top-K; every router row gets gradient. Grouped: K/G experts per group."""
    _, plain = _model(["model.preset=tiny-moe", "model.moe_aux_loss_coeff=0"])
    cfg, ste = _model(["model.preset=tiny-moe", "model.moe_aux_loss_coeff=0", "model.moe_router_ste=true",
                       "model.moe_router_ste_temperature=2.0"])
    assert isinstance(ste.decoder.layers[0].mlp.router, ProRouter)
    ste.load_state_dict(plain.state_dict())
    tokens, pos, mask = _inputs(cfg)
    out_plain, out_ste = plain(tokens, pos, mask, labels=tokens), ste(tokens, pos, mask, labels=tokens)
    assert torch.equal(out_plain, out_ste)
    out_plain.mean().backward()
    out_ste.mean().backward()
    for model, dense in ((plain, False), (ste, True)):
        g = model.decoder.layers[0].mlp.router.weight.grad
        assert (g.abs().sum(dim=1) > 0).all()  # with 32 tokens every expert is selected somewhere
    # Single token: only the STE router gives gradient to the rows of unselected experts.
    hidden = torch.randn(1, 1, 64)
    for model, dense in ((plain, False), (ste, True)):
        router = model.decoder.layers[0].mlp.router
        router.weight.grad = None
        probs, routing_map = router(hidden)
        (probs * torch.arange(1.0, 5.0)).sum().backward()
        unselected = router.weight.grad[~routing_map[0]]
        assert (unselected.abs().sum() > 0) == dense
    # Grouped: 8 experts, 2 groups, top-4 -> 2 experts in each group for every token.
    cfg, grouped = _model(["model.preset=tiny-pro", "model.position_embedding_type=rope"])
    router = grouped.decoder.layers[0].mlp.router
    _, routing_map = router(torch.randn(32, 1, 64))
    assert routing_map.view(32, 2, 4).sum(-1).eq(2).all()
