"""GPU checks of the multimodal model, the Intern-S1-Pro router/FoPE and converted checkpoints with the
TransformerEngine spec. Skipped without CUDA + TransformerEngine."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, cli_env, read_metrics, run_cli

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")


def test_mm_pretrain_with_fp8_language_model(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "examples", "mm_cpt"))
    from make_data import main as make_data

    data = make_data(str(tmp_path / "data"))
    blend = data if data.endswith(".jsonl") else os.path.join(data, "samples.jsonl")
    run_cli(["train", "--config", os.path.join(REPO, "examples/mm_cpt/tiny_cpu.yaml"), f"run.dir={tmp_path / 'run'}",
             f"data.blend=[{blend}]", "model.spec=te", "model.params_dtype=bf16", "model.fp8=delayed",
             "model.hidden_size=128", "model.num_attention_heads=4", "model.kv_channels=32",
             "model.ffn_hidden_size=256", "train.steps=4", "logging.tensorboard=false"])
    records = read_metrics(str(tmp_path / "run"))
    assert len(records) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_mm_pretrain_vlbs_packs_run_as_thd(tmp_path):
    """VLBS-packed multimodal samples (images + series) run through InternS1Model as TE THD sequences (cu_seqlens,
    no mask), train and eval. The same recipe on CPU (local spec, fp32) goes 7.75 -> 5.73 in these 8 steps."""
    sys.path.insert(0, os.path.join(REPO, "examples", "mm_cpt"))
    from make_data import main as make_data

    blend = make_data(str(tmp_path / "data"))  # 48 samples: ~6 packs of 512 tokens per epoch
    proc = run_cli(["train", "--config", os.path.join(REPO, "examples/mm_cpt/tiny_cpu.yaml"),
                    f"run.dir={tmp_path / 'run'}", f"data.blend=[{blend}]", "model.spec=te", "model.params_dtype=bf16",
                    "model.hidden_size=128", "model.num_attention_heads=4", "model.kv_channels=32",
                    "model.ffn_hidden_size=256", "data.packing=vlbs", "data.micro_batch_size=1", "data.seq_length=512",
                    "data.packing_epochs=8", "train.global_batch_tokens=[[0, 2048]]", "train.steps=8",
                    "train.eval_interval=0", "checkpoint.interval=0", "logging.tensorboard=false"])
    records = read_metrics(str(tmp_path / "run"))
    assert len(records) == 8 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[-1]["loss"] < records[0]["loss"] - 0.5 and records[-1]["skipped_steps"] == 0
    result = json.loads(proc.stdout.strip().splitlines()[-1])["result"]
    assert torch.isfinite(torch.tensor(result["valid_loss"]))


def test_pro_router_and_fope_train_on_te(tmp_path, train_args):
    run_cli(train_args(str(tmp_path), "train.steps=4", "model.spec=te", "model.params_dtype=bf16",
                       "model.moe_router_groups=2", "model.moe_router_ste=true", "model.position_embedding_type=fope"))
    records = read_metrics(str(tmp_path))
    assert len(records) == 4 and records[-1]["skipped_steps"] == 0


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_converted_checkpoint_matches_hf_with_te_spec(kind, tmp_path):
    from tests.conversion.hf_models import make_hf_model

    hf = make_hf_model(kind, str(tmp_path / "hf"))
    run_cli(["convert", "hf-to-mcore", "--hf", hf, "--out", str(tmp_path / "mcore")])
    proc = subprocess.run([sys.executable, "-m", "megatron_s1.conversion.verify", "--hf", hf, "--ckpt",
                           str(tmp_path / "mcore"), "--spec", "te"], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["max_abs_diff"] < 2e-2  # TE kernels (fused attention/norms) in fp32 vs transformers
