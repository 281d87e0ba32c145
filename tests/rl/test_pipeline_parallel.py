"""Pipeline parallelism in the RL loop (torchrun, gloo, tiny MoE with one layer per stage).

Every forward of the RL step is one micro-batch of Megatron-Core's pipeline schedule; the last stage samples and
computes the loss, each stage records / replays the routing of its own layers. A PP=2 run from the same init
checkpoint must reproduce the PP=1 run: same prompts, sampled tokens and rewards, and the same losses, grad
norms and train/rollout log-prob agreement."""
import json
import urllib.request

import pytest

from tests.conftest import run_cli
from tests.rl.conftest import DP2_REFERENCE, RL_RECIPE, run_rl, serve_fake_engine

COPY = ["rl.task=toy_copy", "rl.prompts_per_step=4", "rl.samples_per_prompt=4", "rl.mini_batches=2",
        "train.steps=3", "rl.routing_replay=true"]


def _same_run(a_records, b_records, keys=("loss", "grad_norm", "kl_train_rollout")):
    assert len(a_records) == len(b_records) > 0
    for a, b in zip(a_records, b_records):
        assert a["rollout_crc"] == b["rollout_crc"] and a["reward_mean"] == b["reward_mean"], a["step"]
        assert a["kept_samples"] == b["kept_samples"]
        for key in keys:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_pp2_training_matches_pp1(tmp_path, init_ckpt, reference_rl):
    """Copy task, 2 mini-batches, routing replay; the PP=2 checkpoint then resumes at PP=1 like the PP=1 one."""
    pp1_dir, pp1 = reference_rl(*COPY)
    pp2 = run_rl(tmp_path / "pp2", init_ckpt, *COPY, "parallel.pipeline=2", "checkpoint.save_final=true", nproc=2)
    assert any(abs(r["loss"]) > 1e-4 for r in pp1)  # the comparison covers real updates
    _same_run(pp1, pp2)
    for b in pp2:
        # the policy before its first update is the rollout policy, token by token, across the two stages
        assert b["first_update_logp_maxdiff"] < 1e-5 and b["routing_mismatch"] == 0.0
        assert b["kl_train_rollout_replay"] < 1e-9
    one = [*COPY[:-2], "train.steps=1", "rl.routing_replay=true"]
    from_pp1 = run_rl(tmp_path / "from_pp1", pp1_dir / "checkpoints", *one)
    from_pp2 = run_rl(tmp_path / "from_pp2", tmp_path / "pp2" / "checkpoints", *one)
    _same_run(from_pp1, from_pp2, ("loss", "grad_norm"))


@pytest.mark.parametrize("kv_cache", [True, False], ids=["kv_cache", "reforward"])
def test_pp2_generation_matches_pp1(tmp_path, init_ckpt, kv_cache):
    """Free-form prompts of different lengths, full vocabulary, 6 new tokens: the stages pass hidden states on
    every decode step (with the KV cache: each stage caches its own layers) and the last stage's tokens reach all."""
    src = tmp_path / "free.jsonl"
    src.write_text("".join(json.dumps({"prompt": t, "reference": "42", "task": "math"}) + "\n" for t in
                           ["Once upon a time", "The capital of France is", "2+2=", "Q: What is 7 times 6? A:"]))
    common = [f"rl.task=jsonl:{src}", "rl.prompts_per_step=4", "rl.samples_per_prompt=2", "rl.max_new_tokens=6",
              "rl.online_filter=false", "train.steps=2", "rl.routing_replay=true",
              f"rl.kv_cache={str(kv_cache).lower()}"]
    pp1 = run_rl(tmp_path / "pp1", init_ckpt, *common)
    pp2 = run_rl(tmp_path / "pp2", init_ckpt, *common, "parallel.pipeline=2", nproc=2)
    _same_run(pp1, pp2)
    for b in pp2:
        assert b["response_len"] == 6.0
        assert b["logp_train_rollout_maxdiff"] < 1e-5 and b["routing_mismatch"] == 0.0


def test_tp2_pp2_training_matches_pp1(tmp_path, init_ckpt, reference_rl):
    """TP=2 x PP=2 on 4 ranks: sequence-parallel shards [L / TP, N, h] travel between the stages."""
    _, pp1 = reference_rl(*COPY)
    tppp = run_rl(tmp_path / "tp2pp2", init_ckpt, *COPY, "parallel.tensor=2", "parallel.pipeline=2", nproc=4)
    _same_run(pp1, tppp)
    assert all(b["routing_mismatch"] == 0.0 for b in tppp)


def test_pp2_ep2_training_matches_dp2(tmp_path, init_ckpt, reference_rl):
    """PP=2 x EP=2 on 4 ranks = DP=2 (EP ranks are data-parallel ranks with their own prompts; see
    test_expert_parallel.py): the expert all-to-all runs inside each pipeline stage."""
    _, dp2 = reference_rl(*DP2_REFERENCE, nproc=2)
    ppep = run_rl(tmp_path / "pp2ep2", init_ckpt, *DP2_REFERENCE, "parallel.pipeline=2", "parallel.expert=2",
                  nproc=4)
    _same_run(dp2, ppep, ("loss", "grad_norm"))
    assert all(b["routing_mismatch"] == 0.0 and b["kl_train_rollout_replay"] < 1e-9 for b in ppep)


def test_pp2_external_engine(tmp_path, init_ckpt):
    """rl.engine=openai at PP=2: the replica asks the server once (one weight update per step) and every stage
    replays its own layers' slice of the routing the server reports for both layers. Each run gets a fresh server
    (its token ids follow the weight version), so both runs see the same rollouts."""
    common = ["rl.task=toy_copy", "rl.engine=openai", "rl.max_new_tokens=2", "rl.routing_replay=true",
              "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.online_filter=false", "train.steps=2"]
    runs = {}
    for pp in (1, 2):
        with serve_fake_engine() as url:
            runs[pp] = run_rl(tmp_path / f"pp{pp}", init_ckpt, *common, f"rl.engine_url={url}",
                              f"parallel.pipeline={pp}", nproc=pp)
            version = json.load(urllib.request.urlopen(url + "/v1/models"))["version"]
            assert version == 2, version  # one update_weights per step, from one rank of the replica
    # (the server's routing is not the policy's: the mismatch is large, and equal only if every stage replays
    # exactly its own layers)
    _same_run(runs[1], runs[2], ("loss", "grad_norm", "routing_mismatch", "kl_train_rollout_replay"))
    assert all(r["routing_mismatch"] > 0.1 for r in runs[2])


def test_pipeline_config_errors(tmp_path):
    for override, message in (("parallel.virtual_pipeline=2", "unset parallel.virtual_pipeline"),
                              ("vision.preset=tiny-vit", "needs parallel.pipeline=1")):
        proc = run_cli(["rl", "--config", RL_RECIPE, f"run.dir={tmp_path}", "parallel.pipeline=2", override],
                       check=False)
        err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(err) == 1 and message in err[0], proc.stderr[-2000:]
