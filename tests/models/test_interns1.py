"""InternS1Model: embedding merge, placeholder mismatch error, BF16-under-FP8 selection, freeze switches, PP."""
from __future__ import annotations

import pytest
import torch

from megatron_s1.config.schema import load_config
from megatron_s1.models.interns1 import MediaTokenIds, build_interns1_model, merge_embeddings, precision_plan

IDS = MediaTokenIds(img_start=2100, img_end=2101, img_context=2102, ts_start=2103, ts_end=2104, ts_context=2105)


@pytest.fixture(scope="module", autouse=True)
def _parallel():
    from megatron.core import parallel_state

    from megatron_s1.training.distributed import init_distributed

    init_distributed()
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel()
    yield


def _cfg(*extra):
    return load_config(None, ["model.preset=tiny-moe", "model.vocab_size=2112", "model.params_dtype=fp32",
                              "model.spec=local", "vision.preset=tiny-vit", "timeseries.preset=tiny-ts", *extra])


def _model(cfg, pre=True, post=True, fp8=None):
    from megatron_s1.models.language import build_transformer_config

    tconfig = build_transformer_config(cfg)
    tconfig.fp8 = fp8  # FP8 needs TE on GPU; the selection logic is checked on the config alone
    torch.manual_seed(0)
    return build_interns1_model(cfg, tconfig, pre, post, token_ids=IDS)


def test_merge_replaces_placeholders_in_order():
    text = torch.zeros(2, 4, 3)
    ids = torch.tensor([[1, 7, 7, 1], [7, 1, 1, 1]])
    media = torch.arange(9.0).view(3, 3)
    out = merge_embeddings(text, ids, 7, media, "images")
    assert torch.equal(out[0, 1], media[0]) and torch.equal(out[0, 2], media[1]) and torch.equal(out[1, 0], media[2])
    assert torch.equal(out[0, 0], torch.zeros(3))


def test_placeholder_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="3 placeholder tokens .* 2 embeddings"):
        merge_embeddings(torch.zeros(1, 4, 3), torch.tensor([[7, 7, 7, 1]]), 7, torch.zeros(2, 3), "images")
    with pytest.raises(ValueError, match="1 placeholder tokens .* 0 embeddings"):
        merge_embeddings(torch.zeros(1, 2, 3), torch.tensor([[7, 1]]), 7, None, "time series")


def test_forward_with_images_and_series_and_mismatch():
    from megatron_s1.models.timeseries import num_timeseries_tokens

    model = _model(_cfg())
    n_ts = num_timeseries_tokens(300, 100.0)
    seq = [5, IDS.img_start] + [IDS.img_context] * 8 + [IDS.img_end, 6, IDS.ts_start] + [IDS.ts_context] * n_ts
    seq += [IDS.ts_end, 9]
    s = len(seq)
    tokens = torch.tensor([seq])
    pos = torch.arange(s).unsqueeze(0)
    mask = (torch.tril(torch.ones(s, s)) < 0.5).view(1, 1, s, s)
    pixels = torch.randn(2, 3, 56, 56)  # 2 tiles x 4 tokens
    out = model(tokens, pos, mask, labels=tokens, pixel_values=pixels, ts_values=[torch.randn(300, 2)],
                ts_rates=[100.0])
    assert out.shape == (1, s)
    out.sum().backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.timeseries_model.projector.linear_2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="placeholder"):
        model(tokens, pos, mask, labels=tokens, pixel_values=pixels[:1], ts_values=[torch.randn(300, 2)],
              ts_rates=[100.0])


def test_vision_and_projector_stay_bf16_when_llm_is_fp8():
    model = _model(_cfg(), fp8="hybrid")
    plan = precision_plan(model)
    llm = {k: v for k, v in plan.items() if k.startswith("language_model.decoder.") and ".router" not in k}
    assert plan["language_model.decoder.layers.0.mlp.router"] == "fp32"  # the router GEMM stays in fp32
    enc = {k: v for k, v in plan.items() if not k.startswith("language_model.")}
    assert llm and set(llm.values()) == {"fp8"}
    assert any(k.startswith("vision_model.") for k in enc) and any(k.startswith("vision_projection.") for k in enc)
    assert "fp8" not in enc.values()
    assert model.vision_config.fp8 is None
    assert "fp8" not in precision_plan(_model(_cfg())).values()


def test_freeze_switches():
    model = _model(_cfg("mm.freeze_vision=true", "mm.freeze_projector=true", "mm.freeze_router=true"))
    by_name = dict(model.named_parameters())
    assert all(not p.requires_grad for n, p in by_name.items() if n.startswith(("vision_model.", "vision_projection.")))
    routers = [n for n in by_name if ".router." in n]
    assert routers and all(not by_name[n].requires_grad for n in routers)
    assert by_name["language_model.embedding.word_embeddings.weight"].requires_grad
    assert all(p.requires_grad for n, p in by_name.items() if n.startswith("timeseries_model."))
    model = _model(_cfg("mm.freeze_language_model=true"))
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("language_model."))
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("vision_model."))


def test_encoders_live_on_the_first_pipeline_stage_only():
    cfg = _cfg()
    later = _model(cfg, pre=False, post=True)
    assert later.vision_model is None and later.timeseries_model is None
    first = _model(cfg, pre=True, post=False)
    assert first.vision_model is not None and first.timeseries_model is not None
