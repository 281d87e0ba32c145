"""HF <-> Megatron conversion of InternS1ForConditionalGeneration (InternViT + projector + Qwen3 / Qwen3-MoE)
and of the Intern-S1-Pro text backbone (Qwen3-MoE + grouped router + FoPE) on tiny random models.

Covers: logits with images vs. transformers' InternVL classes (what Intern-S1's modeling subclasses) at TP=1
and TP=2 (vision heads 3 -> padded 4), Pro logits vs. an independent reference forward (TP=1; EP=2 slow),
bit-identical round trips with identical config.json, training the tiny mm recipe from a converted
checkpoint and exporting it (slow), and config errors.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, run_cli
from tests.conversion.checks import FULL, TOLERANCE, assert_same_hf_checkpoint, convert, hf_tensors, verify
from tests.conversion.hf_models import make_interns1_model, make_pro_model


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    """{name: path}: the tiny Intern-S1 (dense text) HF dir, converted at TP=1 and at TP=2 (padded heads)."""
    root = tmp_path_factory.mktemp("interns1")
    hf_dir = make_interns1_model(str(root / "hf"))
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 512}, f)
    out = {"hf": hf_dir, "tp1": str(root / "mcore_tp1"), "tp2": str(root / "mcore_tp2")}
    summary = convert(hf_dir, out["tp1"])
    assert summary["architecture"] == "InternS1ForConditionalGeneration"
    convert(hf_dir, out["tp2"], "--tp", "2")
    return out


@pytest.fixture(scope="module")
def pro(tmp_path_factory):
    root = tmp_path_factory.mktemp("pro")
    hf_dir = make_pro_model(str(root / "hf"))
    ckpt = str(root / "mcore")
    convert(hf_dir, ckpt, "--ep", "2")
    return {"hf": hf_dir, "ckpt": ckpt}


# ------------------------------------------------------------------------------------------- InternS1
@pytest.mark.parametrize("which,nproc,layout", [("tp1", 1, []), ("tp2", 2, ["--tp", "2"])], ids=["tp1", "tp2"])
def test_interns1_logits_with_images(mm, which, nproc, layout):
    result = verify(mm["hf"], mm[which], nproc, *layout)
    print(which, result)
    assert result["images"] == 2 and result["logit_scale"] > 0.5
    assert result["max_abs_diff"] <= TOLERANCE, result


def test_interns1_checkpoint_contents(mm):
    with open(os.path.join(mm["tp2"], "trainer_state.json")) as f:
        state = json.load(f)
    cfg = state["config"]
    assert cfg["train"]["task"] == "mm_pretrain" and cfg["timeseries"]["preset"] is None
    vision = cfg["vision"]
    assert vision["preset"] == "tiny-vit" and vision["num_attention_heads"] == 3 and vision["image_size"] == 56
    assert vision["qk_layernorm"] and vision["normalization"] == "RMSNorm"
    assert cfg["model"]["vocab_size"] == 2112 and cfg["parallel"]["tensor"] == 2
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(mm["tp2"]).read_metadata().state_dict_metadata
    # 3 heads padded to 4 for TP=2: 4 heads x (q, k, v) x 16 rows.
    assert tuple(meta["vision_model.decoder.layers.0.self_attention.linear_qkv.weight"].size) == (192, 48)
    assert tuple(meta["vision_model.decoder.layers.0.self_attention.linear_proj.weight"].size) == (48, 64)


@pytest.mark.parametrize("which", [pytest.param("tp1", marks=FULL), "tp2"])
def test_interns1_round_trip_is_bit_identical(mm, which, tmp_path):
    back = str(tmp_path / "back")
    run_cli(["convert", "mcore-to-hf", "--ckpt", mm[which], "--out", back])
    assert_same_hf_checkpoint(mm["hf"], back)
    assert os.path.exists(os.path.join(back, "tokenizer_config.json"))


@FULL
def test_interns1_moe_text(tmp_path):
    """Intern-S1 layout (Qwen3-MoE text): logits with images and the round trip."""
    hf_dir = make_interns1_model(str(tmp_path / "hf"), text="moe")
    ckpt = str(tmp_path / "mcore")
    convert(hf_dir, ckpt)
    result = verify(hf_dir, ckpt, 1)
    assert result["max_abs_diff"] <= TOLERANCE, result
    back = str(tmp_path / "back")
    run_cli(["convert", "mcore-to-hf", "--ckpt", ckpt, "--out", back])
    assert_same_hf_checkpoint(hf_dir, back)


@FULL
def test_interns1_mini_style_vision(tmp_path):
    """InternViT-300M style tower (LayerNorm with biases, qkv bias, no QK-norm)."""
    hf_dir = make_interns1_model(str(tmp_path / "hf"), vision_overrides=dict(
        norm_type="layer_norm", use_qk_norm=False, attention_bias=True))
    ckpt = str(tmp_path / "mcore")
    convert(hf_dir, ckpt, "--tp", "2")
    result = verify(hf_dir, ckpt, 2, "--tp", "2")
    assert result["max_abs_diff"] <= TOLERANCE, result
    back = str(tmp_path / "back")
    run_cli(["convert", "mcore-to-hf", "--ckpt", ckpt, "--out", back])
    assert_same_hf_checkpoint(hf_dir, back)


@pytest.mark.slow
def test_train_mm_recipe_from_converted_then_export(mm, tmp_path):
    """examples/mm_cpt/tiny_cpu.yaml from the converted checkpoint (image-only data: the HF model has no
    time-series encoder), then export the trained checkpoint."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, os.path.join(REPO, "examples", "mm_cpt", "make_data.py"), str(data)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    with open(data / "samples.jsonl") as f, open(data / "images.jsonl", "w") as g:
        g.writelines(line for line in f if '"timeseries"' not in line)
    run_dir = str(tmp_path / "run")
    run_cli(["train", "--config", os.path.join(REPO, "examples", "mm_cpt", "tiny_cpu.yaml"), f"run.dir={run_dir}",
             f"data.blend=[{data / 'images.jsonl'}]", "timeseries.preset=null", "train.steps=2",
             "train.eval_interval=0", "logging.tensorboard=false", f"checkpoint.pretrained={mm['tp1']}"])
    exported = str(tmp_path / "hf_trained")
    run_cli(["convert", "mcore-to-hf", "--ckpt", os.path.join(run_dir, "checkpoints"), "--out", exported])
    trained, original = hf_tensors(exported), hf_tensors(mm["hf"])
    assert sorted(trained) == sorted(original)
    assert any(not torch.equal(trained[n], original[n]) for n in original)
    assert max((trained[n] - original[n]).abs().max().item() for n in original) < 0.01


@pytest.mark.parametrize("path,value,message", [
    (("vision_feature_layer",), -2, "vision_feature_layer"),
    (("vision_config", "use_mean_pooling"), False, "use_mean_pooling"),
    (("vision_config", "patch_size"), [14, 16], "only square"),
    (("text_config", "model_type"), "llama", "text_config.model_type='llama'"),
])
def test_interns1_unsupported_config(mm, path, value, message):
    from megatron_s1.conversion.hf_config import hf_to_sections
    from megatron_s1.conversion.mappings import ConversionError

    with open(os.path.join(mm["hf"], "config.json")) as f:
        cfg = json.load(f)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConversionError, match=message.replace("[", r"\[")):
        hf_to_sections(cfg)


# ------------------------------------------------------------------------------------------- Intern-S1-Pro
def test_pro_config_mapping(pro):
    with open(os.path.join(pro["ckpt"], "trainer_state.json")) as f:
        model = json.load(f)["config"]["model"]
    assert model["moe_router_groups"] == 2 and model["position_embedding_type"] == "fope"
    assert model["fope_sep_head"] is True and model["fope_init_factor"] == 0.5 and model["fope_num_inv_freq"] is None
    assert model["num_moe_experts"] == 4 and model["moe_norm_topk_prob"] is True


def test_pro_logits_match_reference(pro):
    result = verify(pro["hf"], pro["ckpt"], 1)
    print(result)
    assert result["logit_scale"] > 0.5 and result["max_abs_diff"] <= TOLERANCE, result


@pytest.mark.slow
def test_pro_logits_ep2(pro):
    result = verify(pro["hf"], pro["ckpt"], 2, "--ep", "2")
    assert result["max_abs_diff"] <= TOLERANCE, result


def test_pro_round_trip_is_bit_identical(pro, tmp_path):
    back = str(tmp_path / "back")
    run_cli(["convert", "mcore-to-hf", "--ckpt", pro["ckpt"], "--out", back])
    assert_same_hf_checkpoint(pro["hf"], back)
