"""train.task=sft end to end on CPU: held-out assistant loss drops, the mixture is logged and reproducible,
images and time series inside turns train through InternS1Model."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from tests.conftest import REPO, run_cli

RECIPE = os.path.join(REPO, "examples", "sft", "tiny_cpu.yaml")


def _result(proc) -> dict:
    return [json.loads(line)["result"] for line in proc.stdout.splitlines() if line.startswith('{"result"')][-1]


def test_sft_tiny_cpu_heldout_loss_drops(tmp_path):
    base = ["train", "--config", RECIPE, "train.eval_interval=0", "train.log_interval=4", "checkpoint.save_final=false"]
    init = _result(run_cli([*base, f"run.dir={tmp_path / 'init'}", "train.steps=0"]))
    trained = _result(run_cli([*base, f"run.dir={tmp_path / 'run'}", "train.steps=14"]))
    assert init["valid_loss"] > 7.0  # ~ln(vocab) before training
    assert trained["valid_loss"] < init["valid_loss"] - 1.0
    mix = [json.loads((tmp_path / d / "sft_mixture.json").read_text()) for d in ("init", "run")]
    assert mix[0]["sha256"] == mix[1]["sha256"]  # same recipe, same sampled mixture
    assert mix[0]["valid_samples"] > 0 and mix[0]["template"] == "qwen3" and mix[0]["packing"] == "vlbs"


def test_sft_multimodal_turns(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "examples", "mm_cpt"))
    from make_data import make_image, make_series

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "chat.jsonl", "w") as f:
        for i in range(12):
            if i % 2 == 0:
                desc = make_image(str(tmp_path / "img" / f"{i}.png"), rng)
                item = {"image": f"img/{i}.png"}
            else:
                desc, sr = make_series(str(tmp_path / "img" / f"{i}.npy"), rng)
                item = {"timeseries": f"img/{i}.npy", "sampling_rate": sr}
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"text": "Describe this: "}, item]},
                {"role": "assistant", "content": f"It is {desc}."}]}) + "\n")
    proc = run_cli(["train", "--config", RECIPE, f"run.dir={tmp_path / 'run'}", "train.steps=2",
                    f"sft.datasets=[{{path: {tmp_path / 'chat.jsonl'}}}]", "sft.system_prompts={}",
                    "model.vocab_size=2112", "vision.preset=tiny-vit", "vision.max_tiles=4", "timeseries.preset=tiny-ts",
                    "data.split=75,25,0", "data.seq_length=512", "data.packing_epochs=4",
                    "train.global_batch_tokens=[[0,1024]]", "train.eval_interval=0", "checkpoint.save_final=false"])
    result = _result(proc)
    assert np.isfinite(result["valid_loss"]) and result["step"] == 2
    mix = json.loads((tmp_path / "run" / "sft_mixture.json").read_text())
    assert mix["dropped_train"] == 0 and mix["train_samples"] == 9


def test_sft_ablate_over_ratios(tmp_path):
    """Two datasets (one per family), two ratio settings: each run logs the mixture it was asked for."""
    corpus = os.path.join(REPO, "megatron_s1", "data", "corpus", "tiny_chat.jsonl")
    by_family: dict = {}
    with open(corpus) as f:
        for line in f:
            by_family.setdefault(json.loads(line)["family"], []).append(line)
    for fam, lines in by_family.items():
        (tmp_path / f"{fam}.jsonl").write_text("".join(lines[:120]))
    datasets = (f"sft.datasets=[{{path: {tmp_path / 'scientific.jsonl'}, name: sci, ratio: 1}}, "
                f"{{path: {tmp_path / 'general.jsonl'}, name: gen, ratio: 1}}]")
    proc = run_cli(["data", "sft-ablate", "--config", RECIPE, "--ratios", "3,1", "--ratios", "1,1",
                    "--out", str(tmp_path / "abl"), datasets, "sft.mixture_samples=200", "train.steps=1",
                    "train.eval_interval=0", "train.eval_iters=1", "checkpoint.save_final=false"])
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["mixture"] for r in rows] == [{"sci": 0.75, "gen": 0.25}, {"sci": 0.5, "gen": 0.5}]
    assert all(np.isfinite(r["valid_loss"]) for r in rows)
    assert json.loads((tmp_path / "abl" / "summary.json").read_text())[0]["ratios"] == [3.0, 1.0]
