import json
import os
import subprocess
import sys

import torch

from megatron_s1.rl import filtering as F

HERE = os.path.dirname(os.path.abspath(__file__))


def test_offline_filter_pass_rates():
    prompts = [{"prompt": str(i), "reference": "x"} for i in range(4)]
    wins = {"0": 8, "1": 2, "2": 3, "3": 5}  # pass rates 1.0, 0.25, 0.375, 0.625

    def generate(rec, n):
        return ["x"] * wins[rec["prompt"]] + ["y"] * (n - wins[rec["prompt"]])

    rates = F.pass_rates(prompts, generate, lambda p, o, r: float(o == r), n=8)
    assert rates == [1.0, 0.25, 0.375, 0.625]
    kept = F.offline_filter(prompts, rates)
    assert [k["prompt"] for k in kept] == ["2", "3"]


def test_online_filter_groups_and_degenerate():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    degen = torch.tensor([[False, False, False], [False, False, False], [False, True, False]])
    groups, keep = F.online_filter(rewards, degen)
    assert groups.tolist() == [False, False, True]
    assert keep.tolist() == [[False] * 3, [False] * 3, [True, False, True]]


def test_repetition_and_garbled():
    assert F.repeating_tail([5, 6] + [1, 2, 3] * 12)
    assert not F.repeating_tail(list(range(60)))
    assert not F.repeating_tail([7] * 10)  # too short a span to call it endless
    assert F.degenerate("the end " * 20)
    assert not F.degenerate("The answer is 42, because 6 times 7 is 42.")
    assert F.garbled("ab\ufffd\ufffd\x01c")


def test_ckpt_average_cli(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, os.path.join(HERE, "_make_ckpts.py"), str(tmp_path)], check=True, env=env,
                   capture_output=True, timeout=300)
    ckpts = tmp_path / "checkpoints"
    out = tmp_path / "avg"
    res = subprocess.run([sys.executable, "-m", "megatron_s1.cli", "ckpt", "average", "--input",
                          str(ckpts / "iter_0000001"), str(ckpts / "iter_0000002"), "--weights", "1", "3",
                          "--output", str(out)], check=True, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["weights"] == [0.25, 0.75] and report["steps"] == [1, 2]
    res = subprocess.run([sys.executable, os.path.join(HERE, "_make_ckpts.py"), str(tmp_path), str(out)],
                         check=True, env=env, capture_output=True, text=True, timeout=300)
    n, ok = res.stdout.split("CHECK")[-1].split()
    assert int(n) > 5 and ok == "True"
