"""Intern-S1-Pro composite (ViT + merger + FoPE / grouped-router text backbone) against the release's
modeling_interns1_pro.py: a tiny random checkpoint written in the released layout, converted with
`convert hf-to-mcore` (our HF mapping), loaded at TP=1 and at TP=2 x EP=2 (2 gloo processes), fp32 logits
text-only, with two images and with a two-frame video; then exported back bit-identically."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env, free_port, run_cli
from tests.conversion.checks import TOLERANCE, assert_same_hf_checkpoint, convert
from tests.models.pro.release_code import write_release_checkpoint


@pytest.fixture(scope="module")
def pro_mm(tmp_path_factory):
    root = tmp_path_factory.mktemp("pro_mm")
    hf_dir = write_release_checkpoint(str(root / "hf"))
    ckpt = str(root / "mcore")
    summary = convert(hf_dir, ckpt)
    assert summary["architecture"] == "InternS1ProForConditionalGeneration"
    return {"hf": hf_dir, "ckpt": ckpt}


def parity(pro_mm, nproc, *layout):
    args = ["-m", "tests.models.pro._parity_worker", pro_mm["hf"], pro_mm["ckpt"], *layout]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}", *args]
    proc = subprocess.run([sys.executable, "-W", "ignore", *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


@pytest.mark.parametrize("nproc,layout", [(1, []), (2, ["--tp", "2", "--ep", "2", "--etp", "1"])],
                         ids=["tp1", "tp2_ep2"])
def test_logits_match_release(pro_mm, nproc, layout):
    report = parity(pro_mm, nproc, *layout)
    print(report)
    assert report["logit_scale"] > 0.5
    for case in ("text", "images", "video"):
        assert report[case] <= TOLERANCE, report


def test_converted_config(pro_mm):
    with open(os.path.join(pro_mm["ckpt"], "trainer_state.json")) as f:
        cfg = json.load(f)["config"]
    vision = cfg["vision"]
    assert cfg["train"]["task"] == "mm_pretrain" and vision["arch"] == "pro" and vision["preset"] == "tiny-pro-vit"
    assert (vision["num_layers"], vision["hidden_size"], vision["num_attention_heads"], vision["ffn_hidden_size"],
            vision["patch_size"], vision["num_position_embeddings"]) == (2, 32, 2, 64, 16, 64)
    assert cfg["model"]["moe_router_groups"] == 2 and cfg["model"]["position_embedding_type"] == "fope"


def test_round_trip_is_bit_identical(pro_mm, tmp_path):
    back = str(tmp_path / "back")
    run_cli(["convert", "mcore-to-hf", "--ckpt", pro_mm["ckpt"], "--out", back])
    assert_same_hf_checkpoint(pro_mm["hf"], back)
