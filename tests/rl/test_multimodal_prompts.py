"""RL with image prompts through InternS1Model (tiny MoE language model + tiny ViT, CPU)."""
import json
import os

import pytest

from tests.conftest import REPO, run_cli
from tests.rl.conftest import run_check

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("arch", ["internvit", "pro"])
def test_image_prompts_in_the_rl_loop(tmp_path, arch):
    out = run_check("_mm_rl_check.py", tmp_path, arch)
    assert out["model"] == "InternS1Model"
    assert out["media_banned"]  # digits only; media tokens are never sampled
    # tiles per image (56x56 tiles, thumbnail) and one <IMG_CONTEXT> per image token (4 per tile); Pro: the
    # first three images of make_data resized to multiples of 32 px (smart resize), 16 px patches,
    # one <|image_pad|> per 2 x 2 patches
    assert len(out["tiles"]) == 3 and out["placeholders_match"]
    if arch == "pro":  # 90x70 -> 96x64 px, 112x56 -> 128x64, 56x56 -> 64x64 (multiples of 32, round half even)
        assert out["grids"] == [[[1, 4, 6]], [[1, 4, 8]], [[1, 4, 4]]] and out["tiles"] == [24, 32, 16]
    # KV-cached decoding with images (prefill only) = full re-forward with images every step
    assert out["kv_same_tokens"] and out["kv_logp_diff"] < 1e-5
    # same text and length, different image -> different log-prob: the pixels reach the model
    assert out["same_len"] and out["image_changes_logprob"] > 1e-4
    # two RL steps: the vision tower stays frozen (rl.freeze_vision), projector and LLM are trained
    assert out["steps"] == 2 and out["vision_changed"] == []
    assert out["projector_changed"] and out["language_changed"]
    assert out["maxdiff"] < 1e-5 and any(loss != 0.0 for loss in out["losses"])


def test_image_prompts_without_vision_tower_is_one_clear_error(tmp_path):
    from PIL import Image

    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "<image> colour?", "images": ["a.png"], "reference": "1",
                               "task": "toy_copy"}) + "\n")
    proc = run_cli(["rl", "--config", os.path.join(REPO, "examples/rl/tiny_cpu.yaml"), f"run.dir={tmp_path}/r",
                    f"rl.task=jsonl:{src}"], check=False)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1 and "have images; set vision.preset" in err[0], proc.stderr[-2000:]
    src.write_text(json.dumps({"prompt": "<image> colour?", "images": ["missing.png"], "reference": "1",
                               "task": "toy_copy"}) + "\n")
    proc = run_cli(["rl", "--config", os.path.join(REPO, "examples/rl/tiny_cpu.yaml"), f"run.dir={tmp_path}/r",
                    f"rl.task=jsonl:{src}"], check=False)
    assert proc.returncode == 2 and "p.jsonl:1: image" in proc.stderr and "does not exist" in proc.stderr
