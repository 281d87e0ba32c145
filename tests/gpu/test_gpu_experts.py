"""GPU checks of the grouped_mm experts: same numbers as TE's GroupedLinear from one checkpoint, and an MoE layer
whose forward and backward never synchronise the host with the GPU. Skipped without CUDA + TransformerEngine."""
import importlib.util
import time

import pytest
import torch

from tests.conftest import losses, run_cli
from tests.gpu.test_gpu_training import GPU_MODEL

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")

MODEL = [o for o in GPU_MODEL if o.startswith("model.")] + ["model.spec=te", "model.num_moe_experts=16",
                                                          "model.moe_router_topk=4"]


def _build(impl, seed):
    from megatron_s1.config import load_config
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    init_distributed()
    cfg = load_config(None, ["model.preset=tiny-moe", *MODEL, f"model.moe_experts={impl}"])
    initialize_model_parallel(cfg)
    seed_everything(seed)
    return cfg, build_language_model(cfg, build_transformer_config(cfg), True, True).cuda()


def _tokens(cfg, s=512):
    g = torch.Generator(device="cuda").manual_seed(5)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, s), device="cuda", generator=g)
    return tokens, torch.arange(s, device="cuda").expand(2, s)


def test_grouped_mm_matches_te_grouped_linear(tmp_path):
    from megatron.core import dist_checkpointing

    from megatron_s1.models.experts import DeviceCountsAlltoAllDispatcher, GroupedMMExperts

    cfg, te_model = _build("te", seed=0)
    dist_checkpointing.save(te_model.sharded_state_dict(), str(tmp_path))
    _, gm_model = _build("grouped_mm", seed=1)
    layer = gm_model.decoder.layers[0].mlp
    assert isinstance(layer.experts, GroupedMMExperts)
    assert isinstance(layer.token_dispatcher, DeviceCountsAlltoAllDispatcher)
    wanted = {k: v for k, v in gm_model.sharded_state_dict().items() if "_extra_state" not in k}
    gm_model.load_state_dict(dist_checkpointing.load(wanted, str(tmp_path)), strict=False)

    tokens, positions = _tokens(cfg)
    results = []
    for model in (te_model, gm_model):
        loss = model(tokens, positions, None, labels=tokens).float().mean()
        loss.backward()
        fc1 = model.decoder.layers[1].mlp.experts.linear_fc1
        grad = fc1.weight.grad if model is gm_model else torch.stack(
            [getattr(fc1, f"weight{e}").grad for e in range(cfg.model.num_moe_experts)])
        results.append((loss.item(), grad.float()))
    (te_loss, te_grad), (gm_loss, gm_grad) = results
    assert abs(te_loss - gm_loss) <= 2e-3 * te_loss, (te_loss, gm_loss)
    rel = (gm_grad - te_grad).norm() / te_grad.norm()
    assert rel < 2e-2, rel.item()


def _busy_gpu(seconds: float) -> None:
    """Queue `seconds` of GPU spinning (calibrated once) so a host that waits for the GPU is visible."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    torch.cuda._sleep(10**8)
    torch.cuda.synchronize()
    torch.cuda._sleep(int(10**8 * seconds / (time.perf_counter() - t0)))


def test_moe_layer_never_waits_for_the_gpu():
    """The host issues a grouped_mm MoE layer's forward + backward while the GPU is still busy with earlier work
    (no device->host copy of expert counts); with TE's GroupedLinear it has to wait for the GPU first."""
    busy = 1.0
    for impl, waits in (("grouped_mm", False), ("te", True)):
        cfg, model = _build(impl, seed=0)
        mlp = model.decoder.layers[0].mlp
        x = torch.randn(512, 2, cfg.model.hidden_size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2):  # warm-up: first calls may synchronise (kernel selection, allocator growth)
            mlp(x)[0].float().pow(2).mean().backward()
        _busy_gpu(busy)
        t0 = time.perf_counter()
        mlp(x)[0].float().pow(2).mean().backward()
        host_s = time.perf_counter() - t0
        torch.cuda.synchronize()
        assert (host_s > 0.8 * busy) == waits, (impl, host_s)


def test_grouped_mm_recipe_trains_and_resumes_with_te_experts(tmp_path, train_args):
    """Train 4 steps with grouped_mm experts, checkpoint, resume with TE experts: losses continue and fall."""
    run_dir = str(tmp_path)
    run_cli(train_args(run_dir, "train.steps=4", "checkpoint.interval=4", *GPU_MODEL, "model.spec=te",
                       "model.moe_experts=grouped_mm"))
    run_cli(train_args(run_dir, "train.steps=8", *GPU_MODEL, "model.spec=te", "model.moe_experts=te"))
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 9)) and got[8] < got[1]
