"""KV-cached colocated decoding (Megatron-Core static inference context) reproduces the full re-forward."""
from tests.rl.conftest import run_check


def test_kv_cache_matches_full_reforward(tmp_path):
    out = run_check("_kv_cache_check.py", tmp_path)
    for model in ("moe", "fope"):  # tiny MoE with RoPE; tiny dense with FoPE (Intern-S1-Pro)
        # left-padded rows see their own positions (per-row RoPE / FoPE tables)
        assert out[f"{model}_padded_vs_alone"] < 1e-5
        # greedy: identical tokens, row 0 stops at the forced EOS while the others run on (finished rows
        # keep being fed padding that nothing may attend to)
        assert out[f"{model}_greedy_same"] and out[f"{model}_greedy_lens"] == [4, 10, 10]
        assert out[f"{model}_greedy_finished"] == [True, False, False]
        assert out[f"{model}_greedy_logp_diff"] < 1e-5
        # fixed-seed sampling over the full vocabulary: identical tokens, log-probs within 1e-5 (fp32)
        assert out[f"{model}_sampled_same"] and out[f"{model}_sampled_logp_diff"] < 1e-5
        # the local spec applies the padding mask in decode steps, so every batch uses the cache
        assert out[f"{model}_padded_used_cache"] == "batch" and out[f"{model}_equal_used_cache"] == ["off", "batch"]
        assert out[f"{model}_equal_same"] and out[f"{model}_equal_logp_diff"] < 1e-5
        # TE's rule (decode ignores padding masks) forced on the local spec: one cache per prompt length, reassembled
        assert out[f"{model}_grouped_mode"] == "by_length" and out[f"{model}_grouped_same"]
        assert out[f"{model}_grouped_lens"][2:4] == [4, 4] and out[f"{model}_grouped_logp_diff"] < 1e-5
        # sampled rows draw from their own seed: decoding them in groups samples the same tokens
        assert out[f"{model}_grouped_sampled_same"] and out[f"{model}_grouped_sampled_logp_diff"] < 1e-5
    # MoE routing recorded during cached decoding (one forward per token) = the full forward's, on every
    # forwarded real token; same [L, N, k] layout per layer
    assert out["moe_routing_shapes"][0] == out["moe_routing_shapes"][1]
    diff, total = out["moe_routing_diff"]
    assert total > 150 and diff == 0
    diff, total = out["moe_grouped_routing_diff"]
    assert total > 150 and diff == 0
    diff, total = out["moe_grouped_sampled_routing_diff"]
    assert total > 150 and diff == 0
