"""HF <-> Megatron conversion on tiny random Qwen3 / Qwen3-MoE models built with transformers itself.

Covers: logits vs. transformers at TP=1, TP=2 and EP=2 (gloo, 2 processes), bit-identical round trip with an
identical config, fine-tuning from a converted checkpoint under another layout and exporting the result,
and the bad-input errors (one line, nothing left behind).
"""
import json
import os
import shutil

import pytest
import torch

from tests.conftest import RECIPE, run_cli
from tests.conversion.checks import FULL, TOLERANCE, assert_same_hf_checkpoint, convert, hf_tensors, verify
from tests.conversion.hf_models import make_hf_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{kind: (hf_dir, converted_ckpt_dir)} for kind in dense, moe."""
    root = tmp_path_factory.mktemp("conv")
    out = {}
    for kind in ("dense", "moe"):
        hf_dir = make_hf_model(kind, str(root / f"hf_{kind}"))
        with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:  # side files travel along
            json.dump({"model_max_length": 512}, f)
        ckpt = str(root / f"mcore_{kind}")
        convert(hf_dir, ckpt, "--tp", "2")
        out[kind] = (hf_dir, ckpt)
    return out


@pytest.mark.parametrize("kind,nproc,layout", [
    ("dense", 1, []),
    pytest.param("dense", 2, ["--tp", "2"], marks=FULL),
    pytest.param("moe", 1, [], marks=FULL),
    pytest.param("moe", 2, ["--tp", "2"], marks=pytest.mark.slow),  # MoE + TP: sequence parallel, ETP=2
    pytest.param("moe", 2, ["--ep", "2"], marks=pytest.mark.slow),
], ids=["dense-tp1", "dense-tp2", "moe-tp1", "moe-tp2", "moe-ep2"])
def test_logits_match_transformers(models, kind, nproc, layout):
    hf_dir, ckpt = models[kind]
    result = verify(hf_dir, ckpt, nproc, *layout)
    print(kind, layout, result)
    assert result["logit_scale"] > 0.5  # logits are O(1): the tolerance is meaningful
    assert result["max_abs_diff"] <= TOLERANCE, result


def test_converted_checkpoint_contents(models):
    hf_dir, ckpt = models["moe"]
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        state = json.load(f)
    model = state["config"]["model"]
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    assert model["num_layers"] == hf["num_hidden_layers"] and model["num_moe_experts"] == 4
    assert model["moe_ffn_hidden_size"] == hf["moe_intermediate_size"] and model["moe_norm_topk_prob"] is True
    assert model["rotary_base"] == 10_000 and model["norm_epsilon"] == hf["rms_norm_eps"]
    assert state["config"]["parallel"]["tensor"] == 2 and state["step"] == 0
    assert sorted(os.listdir(os.path.join(ckpt, "hf"))) == ["config.json", "generation_config.json",
                                                            "tokenizer_config.json"]
    assert not [n for n in os.listdir(os.path.dirname(ckpt)) if ".tmp" in n]


@pytest.mark.parametrize("kind", [pytest.param("dense", marks=FULL), "moe"])
def test_round_trip_is_bit_identical(models, kind, tmp_path):
    hf_dir, ckpt = models[kind]
    back = str(tmp_path / "hf_back")
    run_cli(["convert", "mcore-to-hf", "--ckpt", ckpt, "--out", back])
    assert_same_hf_checkpoint(hf_dir, back)
    assert os.path.exists(os.path.join(back, "tokenizer_config.json"))
    # The export loads with transformers unmodified and computes the same logits.
    import transformers

    tokens = torch.randint(0, 2048, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)(input_ids=tokens).logits
        got = transformers.AutoModelForCausalLM.from_pretrained(back)(input_ids=tokens).logits
    assert torch.equal(ref, got)


@pytest.mark.slow
def test_finetune_from_converted_then_export(models, tmp_path, data_prefix):
    """Train from the converted MoE checkpoint under EP=2, then export the trained checkpoint to HF."""
    hf_dir, ckpt = models["moe"]
    run_dir = str(tmp_path / "run")
    run_cli(["train", "--config", RECIPE, f"run.dir={run_dir}", f"data.blend=[{data_prefix}]",
             "logging.tensorboard=false", "train.eval_interval=0", "train.steps=2", "train.global_batch_tokens=[[0, 1024]]",
             f"checkpoint.pretrained={ckpt}", "parallel.expert=2"], nproc=2)
    exported = str(tmp_path / "hf_trained")
    run_cli(["convert", "mcore-to-hf", "--ckpt", os.path.join(run_dir, "checkpoints"), "--out", exported])
    trained, original = hf_tensors(exported), hf_tensors(hf_dir)
    assert sorted(trained) == sorted(original)
    # Training moved the converted weights a little (Adam, 2 steps); a fresh init (std 0.02 in the recipe,
    # 0.1 in the HF model) would be far away: the pretrained weights were loaded under EP=2.
    assert any(not torch.equal(trained[n], original[n]) for n in original)
    assert max((trained[n] - original[n]).abs().max().item() for n in original) < 0.01
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(exported)
    assert type(model).__name__ == "Qwen3MoeForCausalLM"


# ------------------------------------------------------------------------------------------- bad input
def _cli_error(args, capsys):
    from megatron_s1.cli import main

    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("error: ")]  # (torch may log an unrelated CUDA notice)
    assert code == 2 and len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _no_leftovers(out_dir):
    parent = os.path.dirname(os.path.abspath(out_dir))
    assert not os.path.exists(out_dir)
    assert not [n for n in os.listdir(parent) if ".tmp" in n], os.listdir(parent)


def test_unknown_architecture(models, tmp_path, capsys):
    hf_dir = str(tmp_path / "llama")
    shutil.copytree(models["dense"][0], hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["LlamaForCausalLM"]
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    out = str(tmp_path / "out")
    assert "unsupported architecture 'LlamaForCausalLM'" in _cli_error(
        ["convert", "hf-to-mcore", "--hf", hf_dir, "--out", out], capsys)
    _no_leftovers(out)


def test_missing_shard(models, tmp_path, capsys):
    hf_dir = str(tmp_path / "partial")
    shutil.copytree(models["moe"][0], hf_dir)
    shards = sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))
    os.remove(os.path.join(hf_dir, shards[-1]))
    out = str(tmp_path / "out")
    assert f"missing shard {shards[-1]}" in _cli_error(["convert", "hf-to-mcore", "--hf", hf_dir, "--out", out],
                                                      capsys)
    _no_leftovers(out)


def test_existing_output_needs_force(models, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    msg = _cli_error(["convert", "mcore-to-hf", "--ckpt", models["dense"][1], "--out", str(out)], capsys)
    assert "already exists; pass --force" in msg
    assert (out / "keep.txt").read_text() == "x"


def test_config_weight_mismatch(models, tmp_path):
    """config.json says 128 ffn rows, the weights have 96: one error line, no output directory."""
    hf_dir = str(tmp_path / "bad")
    shutil.copytree(models["dense"][0], hf_dir)
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 96
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    out = str(tmp_path / "out")
    proc = run_cli(["convert", "hf-to-mcore", "--hf", hf_dir, "--out", out], check=False)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "shape mismatch" in lines[0], proc.stderr[-2000:]
    _no_leftovers(out)
