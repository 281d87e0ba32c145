"""GPU: a tiny Intern-S1-Pro checkpoint in the release's block-FP8 format, converted with hf-to-mcore, trains on
the TE spec with FP8 routed experts (model.fp8=blockwise, fp8_modules=experts, FP32 LM head: the Pro selection).
Skipped without CUDA + TransformerEngine."""
import importlib.util
import json
import os

import pytest
import torch

from tests.conftest import read_metrics, run_cli
from tests.conversion.checks import convert
from tests.conversion.fp8_release import make_fp8_pro_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")

# Blockwise FP8 GEMMs want 128-multiples: hidden 256, 4 heads x 64, experts 256 wide (2 x 2 blocks each).
SHAPES = dict(hidden_size=256, head_dim=64, moe_intermediate_size=256)
# Model fields the converted checkpoint defines (the recipe's tiny-moe preset is replaced by them).
ARCHITECTURE = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                "ffn_hidden_size", "num_moe_experts", "moe_router_topk", "moe_router_groups", "moe_ffn_hidden_size",
                "moe_norm_topk_prob", "vocab_size", "max_position_embeddings", "rotary_base",
                "position_embedding_type", "fope_init_factor", "fope_sep_head", "norm_epsilon",
                "untie_embeddings_and_output_weights")
COMMON = ["model.spec=te", "model.params_dtype=bf16", "model.preset=tiny-pro", "data.seq_length=256",
          "data.micro_batch_size=4", "train.global_batch_tokens=[[0, 4096]]", "optimizer.lr=1e-3"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8_pro")
    hf_dir = make_fp8_pro_model(str(root / "hf"), **SHAPES)
    ckpt = str(root / "mcore")
    assert convert(hf_dir, ckpt)["dequantized"]["tensors"] == 2 * (4 + 4 * 3)
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        model = json.load(f)["config"]["model"]
    overrides = [f"model.{k}={json.dumps(model[k])}" for k in ARCHITECTURE]
    return ckpt, overrides


def test_converted_fp8_release_trains_with_fp8_experts(converted, tmp_path, train_args):
    ckpt, overrides = converted
    fp8_run, bf16_run = str(tmp_path / "fp8"), str(tmp_path / "bf16")
    start = [*COMMON, *overrides, f"checkpoint.pretrained={ckpt}"]
    run_cli(train_args(fp8_run, "train.steps=6", *start, "model.fp8=blockwise", "model.fp8_modules=experts",
                       "model.fp32_lm_head=true"))
    run_cli(train_args(bf16_run, "train.steps=1", *start))
    records = read_metrics(fp8_run)
    print("fp8 experts losses", [round(r["loss"], 4) for r in records])
    assert len(records) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    # Step 1 is the converted weights' loss: FP8 experts agree with the bf16 forward of the same weights.
    first_bf16 = read_metrics(bf16_run)[0]["loss"]
    print("step-1 loss fp8 experts", records[0]["loss"], "bf16", first_bf16)
    assert abs(records[0]["loss"] - first_bf16) < 0.02 * first_bf16
