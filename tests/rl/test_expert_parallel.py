"""Expert parallelism in the RL loop (torchrun, 2 or 4 ranks, gloo, tiny MoE with 4 experts).

The EP ranks are data-parallel ranks of the dense parts, each sampling its own prompts, so an EP=2 run is compared
with a DP=2, EP=1 run from the same init checkpoint: same seeds per data-parallel rank -> same prompts and tokens,
and the same global objective; only the expert placement (all-to-all vs local experts) differs."""
import pytest

from tests.rl.conftest import DP2_REFERENCE, DP_COMMON, run_check, run_rl

@pytest.mark.parametrize("replay", [True, False], ids=["replay", "no_replay"])
def test_ep2_training_matches_dp2(tmp_path, init_ckpt, reference_rl, replay):
    replay_flag = f"rl.routing_replay={str(replay).lower()}"
    dp2_dir, dp2 = reference_rl(*DP2_REFERENCE, nproc=2) if replay else reference_rl(*DP_COMMON, replay_flag, nproc=2)
    ep2 = run_rl(tmp_path / "ep2", init_ckpt, *DP_COMMON, replay_flag, "parallel.expert=2",
                 f"checkpoint.save_final={str(replay).lower()}", nproc=2)
    assert len(dp2) == len(ep2) == 3
    assert any(abs(r["loss"]) > 1e-4 for r in dp2)  # the comparison covers real updates
    for a, b in zip(dp2, ep2):
        # same prompts and sampled tokens (checksum of data-parallel rank 0; rewards are gathered over both ranks)
        assert a["rollout_crc"] == b["rollout_crc"] and a["reward_mean"] == b["reward_mean"], a["step"]
        assert a["kept_samples"] == b["kept_samples"]
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
        assert b["kl_train_rollout"] < 1e-9 and b["first_update_logp_maxdiff"] < 1e-5
        if replay:  # the rollout's routing, recorded across the EP all-to-all, is the training forward's
            assert b["routing_mismatch"] == 0.0 and b["kl_train_rollout_replay"] < 1e-9
        else:
            assert "routing_mismatch" not in b and "kl_train_rollout_replay" not in b
    if replay:
        # Checkpoint of the EP=2 run (experts sharded over 2 ranks), loaded at EP=1: one more step from it
        # reproduces the same step from the DP=2 run's checkpoint.
        one = ["train.steps=1", "rl.routing_replay=true", *DP_COMMON[:-1]]
        from_dp = run_rl(tmp_path / "from_dp2", dp2_dir / "checkpoints", *one, nproc=2)
        from_ep = run_rl(tmp_path / "from_ep2", tmp_path / "ep2" / "checkpoints", *one, nproc=2)
        assert from_dp[0]["rollout_crc"] == from_ep[0]["rollout_crc"]
        for key in ("loss", "grad_norm"):
            assert from_ep[0][key] == pytest.approx(from_dp[0][key], rel=1e-5, abs=1e-7), key


def test_tp2_ep2_training_matches_dp2(tmp_path, init_ckpt, reference_rl):
    """TP=2 x EP=2 on 4 ranks (expert-TP 1: the 2 TP ranks of a DP rank split the experts' tokens) = DP=2."""
    _, dp2 = reference_rl(*DP2_REFERENCE, nproc=2)
    tpep = run_rl(tmp_path / "tp2ep2", init_ckpt, *DP2_REFERENCE, "parallel.tensor=2", "parallel.expert=2",
                  "parallel.expert_tensor=1", nproc=4)
    assert len(dp2) == len(tpep) == 3
    for a, b in zip(dp2, tpep):
        assert a["rollout_crc"] == b["rollout_crc"] and a["reward_mean"] == b["reward_mean"], a["step"]
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (a["step"], key)
        assert b["routing_mismatch"] == 0.0 and b["kl_train_rollout_replay"] < 1e-9


def test_ep2_generation_ranks_finish_at_different_steps(tmp_path):
    """Rank 0's rows all end after 1 token, rank 1's after 4 (KV cache and full re-forward): rank 0 keeps
    forwarding padding through the all-to-all until rank 1 is done (without that the run hangs: timeout)."""
    res = run_check("_ep_generation_check.py", tmp_path, 2, nproc=2, timeout=180)
    for rank, want in ((0, 1), (1, 4)):
        for kv in ("kv1", "kv0"):
            out = res[rank][kv]
            assert out["lens"] == [want, want], (rank, kv)
            assert out["routing_len"] == [out["batch_len"]] * 2  # replay layout = the training batch's
            assert out["logp_maxdiff"] < 1e-5 and out["routing_mismatch"] == 0.0, (rank, kv, out)
        assert res[rank]["kv1"]["tokens"] == res[rank]["kv0"]["tokens"]
