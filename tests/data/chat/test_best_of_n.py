"""`megatron-s1 data best-of-n`: best response per prompt above a threshold, module:function or registry reward."""
from __future__ import annotations

import json

import pytest

from megatron_s1.data.best_of_n import group_records, load_reward, select_best
from megatron_s1.data.curation.errors import CurationError
from tests.conftest import run_cli


def length_reward(prompt, response, reference=None, **meta):
    """Test verifier: 1 if the response equals the reference, else a partial score by shared prefix."""
    if response == reference:
        return 1.0
    return sum(a == b for a, b in zip(response, reference or "")) / max(1, len(reference or ""))


GROUPED = [
    {"id": "a", "prompt": "2+3?", "responses": ["6", "5", "the answer is 5"], "reference": "5"},
    {"id": "b", "prompt": "2*3?", "responses": ["5", "7"], "reference": "6"},  # nothing correct -> dropped
    {"id": "c", "prompt": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "1+1?"}],
     "responses": ["2", "2", "2"], "reference": "2", "family": "scientific"},
]


def test_select_best_threshold_and_ties():
    score = load_reward("tests.data.chat.test_best_of_n:length_reward")
    kept, stats = select_best(group_records(GROUPED), score, threshold=1.0)
    assert [k["id"] for k in kept] == ["a", "c"]
    assert kept[0]["messages"] == [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}]
    assert kept[1]["messages"][0]["role"] == "system" and kept[1]["family"] == "scientific"
    assert kept[1]["pass_rate"] == 1.0
    assert stats == {"prompts": 3, "responses": 8, "kept": 2, "below_threshold": 1, "too_easy": 0, "no_responses": 0}
    kept, stats = select_best(group_records(GROUPED), score, threshold=1.0, max_pass_rate=0.9)
    assert [k["id"] for k in kept] == ["a"] and stats["too_easy"] == 1


def test_flat_records_group_by_id():
    flat = [{"id": "q", "prompt": "x", "response": r, "reference": "ab"} for r in ("a", "ab", "b")]
    groups = group_records(flat)
    assert len(groups) == 1 and groups[0]["responses"] == ["a", "ab", "b"]


def test_registry_reward():
    score = load_reward("math")  # megatron_s1.rl.rewards registry
    kept, _ = select_best(group_records([{"prompt": "2+3?", "responses": ["\\boxed{6}", "so \\boxed{5}"],
                                          "reference": "5"}]), score, 1.0)
    assert kept[0]["messages"][-1]["content"] == "so \\boxed{5}"
    with pytest.raises(CurationError):
        load_reward("no.such.module:fn")


def test_cli(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in GROUPED))
    proc = run_cli(["data", "best-of-n", "--input", str(src), "--output", str(out),
                    "--reward", "tests.data.chat.test_best_of_n:length_reward", "--threshold", "1"])
    assert json.loads(proc.stdout.strip().splitlines()[-1])["kept"] == 2
    assert len(out.read_text().splitlines()) == 2
    bad = run_cli(["data", "best-of-n", "--input", str(tmp_path / "missing.jsonl"), "--output", str(out),
                   "--reward", "math"], check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
