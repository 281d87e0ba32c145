"""grouped_mm experts (models/experts.py) against Megatron's SequentialMLP: same numbers, same checkpoint layout."""
import pytest
import torch
from megatron.core import dist_checkpointing

from megatron_s1.config import load_config
from megatron_s1.config.schema import ConfigError
from megatron_s1.models.experts import GroupedMMExperts
from megatron_s1.models.language import build_language_model, build_transformer_config
from megatron_s1.models.specs import resolve_experts_impl
from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything


@pytest.fixture(scope="module")
def single_process():
    init_distributed()
    yield


def _build(impl, seed=0, *overrides):
    cfg = load_config(None, ["model.preset=tiny-moe", "model.params_dtype=fp32", f"model.moe_experts={impl}",
                             *overrides])
    initialize_model_parallel(cfg)
    seed_everything(seed)
    return cfg, build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)


def _loss_and_grads(cfg, model, tokens):
    b, s = tokens.shape
    positions = torch.arange(s).expand(b, s)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
    model.zero_grad()
    loss = model(tokens, positions, causal, labels=tokens).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _stack_expert_grads(grads: dict, layer: int, num_experts: int, fc: str) -> torch.Tensor:
    return torch.stack([grads[f"decoder.layers.{layer}.mlp.experts.local_experts.{e}.{fc}.weight"]
                        for e in range(num_experts)])


def test_grouped_mm_matches_sequential_forward_and_backward(single_process, tmp_path):
    """Sequential weights saved, loaded into grouped_mm experts (one [E, out, in] tensor): equal loss and grads."""
    cfg, sequential = _build("sequential", seed=0)
    dist_checkpointing.save(sequential.sharded_state_dict(), str(tmp_path))
    _, grouped = _build("grouped_mm", seed=1)  # different init: everything must come from the checkpoint
    experts = grouped.decoder.layers[0].mlp.experts
    assert isinstance(experts, GroupedMMExperts)
    assert not torch.equal(experts.linear_fc1.weight[0],
                           sequential.decoder.layers[0].mlp.experts.local_experts[0].linear_fc1.weight)
    grouped.load_state_dict(dist_checkpointing.load(grouped.sharded_state_dict(), str(tmp_path)))

    tokens = torch.randint(0, cfg.model.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    ref_loss, ref_grads = _loss_and_grads(cfg, sequential, tokens)
    loss, grads = _loss_and_grads(cfg, grouped, tokens)
    assert abs(loss.item() - ref_loss.item()) <= 1e-6 * ref_loss.item(), (loss.item(), ref_loss.item())
    E = cfg.model.num_moe_experts
    for layer in range(cfg.model.num_layers):
        for fc in ("linear_fc1", "linear_fc2"):
            got = grads[f"decoder.layers.{layer}.mlp.experts.{fc}.weight"]
            torch.testing.assert_close(got, _stack_expert_grads(ref_grads, layer, E, fc), rtol=1e-5, atol=1e-7)
            assert got.abs().sum() > 0
    for name in ("decoder.layers.0.mlp.router.weight", "embedding.word_embeddings.weight"):
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-7)


def test_grouped_mm_checkpoint_loads_into_sequential(single_process, tmp_path):
    _, grouped = _build("grouped_mm", seed=2)
    dist_checkpointing.save(grouped.sharded_state_dict(), str(tmp_path))
    _, sequential = _build("sequential", seed=3)
    wanted = {k: v for k, v in sequential.sharded_state_dict().items() if "_extra_state" not in k}
    sequential.load_state_dict(dist_checkpointing.load(wanted, str(tmp_path)), strict=False)
    w = grouped.decoder.layers[1].mlp.experts.linear_fc2.weight
    for e in range(w.shape[0]):
        assert torch.equal(sequential.decoder.layers[1].mlp.experts.local_experts[e].linear_fc2.weight, w[e])


def test_expert_with_no_tokens(single_process):
    """An expert that receives no token (an empty group) contributes nothing and gets a zero gradient."""
    _, model = _build("grouped_mm", seed=0)
    experts = model.decoder.layers[0].mlp.experts
    x = torch.randn(5, 64, requires_grad=True)
    counts = torch.tensor([2, 0, 3, 0])
    out, bias = experts(x, counts, torch.rand(5))
    assert bias is None and out.shape == (5, 64)
    out.pow(2).sum().backward()
    g = experts.linear_fc1.weight.grad
    assert g[1].abs().sum() == 0 and g[3].abs().sum() == 0 and g[0].abs().sum() > 0


@pytest.mark.parametrize("overrides, expected", [
    (["model.spec=local"], "sequential"),
    (["model.spec=local", "model.moe_experts=grouped_mm"], "grouped_mm"),
    (["model.num_moe_experts=null"], None),
])
def test_auto_choice(overrides, expected):
    cfg = load_config(None, ["model.preset=tiny-moe", *overrides])
    assert resolve_experts_impl(cfg) == expected


@pytest.mark.parametrize("overrides, message", [
    (["model.moe_experts=fast"], "model.moe_experts must be one of"),
    (["model.spec=local", "model.moe_experts=te"], "needs the TransformerEngine spec"),
    (["model.spec=local", "model.moe_experts=grouped_mm", "model.moe_ffn_hidden_size=20"], "multiples of 8"),
    (["model.spec=local", "model.moe_experts=grouped_mm", "parallel.expert_tensor=2"], "expert tensor parallel"),
])
def test_bad_choices_are_one_clear_error(overrides, message):
    cfg = load_config(None, ["model.preset=tiny-moe", *overrides])
    with pytest.raises(ConfigError, match=message):
        resolve_experts_impl(cfg)


def test_rowwise_e4m3_round_trip_and_weight_cache_generations():
    """CPU parts of grouped_mm_fp8 (the GEMMs themselves need SM 8.9+: bench/gpu_jobs/check_fp8_gmm.py)."""
    from megatron_s1.models import experts

    torch.manual_seed(0)
    t = torch.randn(6, 32) * torch.logspace(-3, 2, 6).unsqueeze(1)  # rows of very different magnitude
    q, scale = experts._rowwise_e4m3(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (6,)
    back = q.float() * scale.unsqueeze(1)
    assert ((back - t).abs() <= 0.07 * t.abs().amax(dim=1, keepdim=True)).all()  # e4m3: 3 mantissa bits per row
    w = torch.randn(3, 8, 16)
    cache = experts._FP8WeightCache()
    experts._GENERATION.update(managed=False, value=0)
    first = cache.get(w)[0][0]
    assert cache.get(w)[0][0] is not first  # unmanaged: quantised on every call
    experts.new_weight_generation()
    first = cache.get(w)[0][0]
    assert cache.get(w)[0][0] is first  # reused inside one generation (micro-batches of a step)
    fwd, bwd = cache.get(w)
    assert fwd[0].shape == (3, 16, 8) and fwd[0].stride()[-2] == 1 and fwd[1].shape == (3, 8)  # column-major
    assert bwd[0].shape == (3, 8, 16) and bwd[0].stride()[-2] == 1 and bwd[1].shape == (3, 16)
    w.data.mul_(2)  # an optimizer write through .data: the version counter does not move ...
    experts.new_weight_generation()  # ... so the loop's new generation is what invalidates
    assert torch.allclose(cache.get(w)[0][1], 2 * fwd[1])
    experts._GENERATION.update(managed=False, value=0)


def test_grouped_mm_fp8_needs_an_fp8_gpu():
    from megatron_s1.config import ConfigError, load_config
    from megatron_s1.models.specs import resolve_experts_impl

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    cfg = load_config(None, ["model.num_moe_experts=4", "model.moe_experts=grouped_mm_fp8"])
    with pytest.raises(ConfigError, match="needs a CUDA GPU with FP8"):
        resolve_experts_impl(cfg)


def test_router_padding_for_fp8_pads_a_copy_of_the_routing_map(single_process):
    """`model.moe_router_padding_fp8`: megatron-core's pad_routing_map writes into its input (the router output
    autograd saved: the first backward failed on the GPU); our dispatcher pads a copy, counts to the FP8 multiple."""
    from megatron.core.transformer.moe.moe_utils import pad_routing_map

    from megatron_s1.models.experts import PaddedRoutingAlltoAllDispatcher, specialise_dispatchers

    routing = torch.tensor([[1, 0], [0, 0], [1, 0]], dtype=torch.bool)
    pad_routing_map(routing, 4)
    assert routing.sum() > 2  # upstream still pads in place (drop our copy once it does not)

    cfg, model = _build("sequential", 0, "model.moe_router_topk=2")
    tconfig = model.config
    tconfig.moe_router_padding_for_quantization, tconfig.fp8, tconfig.fp8_recipe = True, "e4m3", "blockwise"
    assert specialise_dispatchers(model) == cfg.model.num_layers
    layer = model.decoder.layers[0].mlp
    assert type(layer.token_dispatcher) is PaddedRoutingAlltoAllDispatcher
    hidden = torch.randn(1, 37, cfg.model.hidden_size)
    probs, routing_map = layer.router(hidden)
    before = routing_map.clone()
    layer.token_dispatcher.dispatch_preprocess(hidden, routing_map, probs)
    assert torch.equal(routing_map, before)
    counts = layer.token_dispatcher.tokens_per_expert
    assert int(counts.sum()) > int(before.sum()) and all(int(c) % 16 == 0 for c in counts)
