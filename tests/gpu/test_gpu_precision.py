"""GPU checks of the numerics options: FP8 on routed experts only + FP32 LM head (Intern-S1-Pro selection) and
TE fused weight-gradient accumulation. Skipped without CUDA + TransformerEngine."""
import importlib.util

import pytest
import torch

from tests.conftest import read_metrics, run_cli
from tests.gpu.test_gpu_training import GPU_MODEL

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")


def test_fp8_only_on_routed_experts(tmp_path):
    """After a training forward, TE records per module whether it ran in FP8: experts yes, the rest no."""
    from megatron_s1.config import load_config
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.models.precision import _te_linear_types, is_routed_expert
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    init_distributed()
    cfg = load_config(None, ["model.preset=tiny-moe", *[o for o in GPU_MODEL if o.startswith("model.")],
                             "model.spec=te", "model.fp8=blockwise", "model.fp8_modules=experts",
                             "model.fp32_lm_head=true", "model.moe_shared_expert_intermediate_size=256"])
    initialize_model_parallel(cfg)
    seed_everything(0)
    model = build_language_model(cfg, build_transformer_config(cfg), True, True).cuda()
    s = 256
    tokens = torch.randint(0, cfg.model.vocab_size, (2, s), device="cuda")
    positions = torch.arange(s, device="cuda").expand(2, s)
    logits = model(tokens, positions, None)
    assert logits.dtype == torch.float32  # FP32 LM head
    per_token = model(tokens, positions, None, labels=tokens)
    per_token.float().mean().backward()
    seen = {}
    for name, module in model.named_modules():
        if isinstance(module, _te_linear_types()):
            seen[name] = bool(getattr(module, "fp8"))
    experts = {n: v for n, v in seen.items() if is_routed_expert(n)}
    others = {n: v for n, v in seen.items() if not is_routed_expert(n)}
    assert experts and all(experts.values()), experts
    assert any("shared_experts" in n for n in others) and any("linear_qkv" in n for n in others)
    assert not any(others.values()), others


def test_fp8_experts_recipe_trains(tmp_path, train_args):
    run_cli(train_args(str(tmp_path), "train.steps=8", "model.spec=te", *GPU_MODEL, "model.fp8=blockwise",
                       "model.fp8_modules=experts", "model.fp32_lm_head=true"))
    records = read_metrics(str(tmp_path))
    assert len(records) == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]


def test_fused_wgrad_accumulation_matches_unfused(tmp_path, train_args):
    """4 micro-batches per step: TE's fused accumulation into main_grad gives the same training as the plain path
    (model.fusions=false also switches the other kernel fusions, hence the bf16 tolerance)."""
    common = ["train.steps=6", "model.spec=te", *GPU_MODEL]
    run_cli(train_args(str(tmp_path / "fused"), *common))
    run_cli(train_args(str(tmp_path / "plain"), *common, "model.fusions=false"))
    fused, plain = read_metrics(str(tmp_path / "fused")), read_metrics(str(tmp_path / "plain"))
    for a, b in zip(fused, plain):
        assert abs(a["loss"] - b["loss"]) < 2e-2, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 0.05 * b["grad_norm"], (a["step"], a["grad_norm"], b["grad_norm"])
