"""RL rollouts on the TE spec (GPU): the KV cache only ever holds rows without left padding (TE's decode step ignores
padding masks): one-length batches decode as one, others one equal-length group at a time; both match the full
re-forward. Skipped without CUDA + TransformerEngine."""
import importlib.util

import pytest
import torch

from tests.rl.conftest import run_check

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")


def test_te_kv_cache_only_without_left_padding(tmp_path):
    out = run_check("_kv_cache_check.py", tmp_path, "model.spec=te")
    assert out["moe_padded_vs_alone"] < 1e-5  # full forward: left padding masked, RoPE shift-invariant
    assert out["moe_padded_used_cache"] == "by_length"  # one cache per prompt length, never left padding
    assert out["moe_equal_used_cache"] == ["off", "batch"]
    assert out["moe_equal_same"] and out["moe_equal_logp_diff"] < 1e-4
    assert out["moe_greedy_same"] and out["moe_greedy_logp_diff"] < 1e-4
    assert out["moe_grouped_same"] and out["moe_grouped_logp_diff"] < 1e-4
    # sampled rows (one seed per row, not one generator for the batch) sample the same tokens whether the batch
    # decodes whole or in equal-length groups; so their routing must agree too
    assert out["moe_sampled_same"] and out["moe_grouped_sampled_same"]
    assert out["moe_routing_diff"][0] == 0 and out["moe_grouped_routing_diff"][0] == 0
    assert out["moe_grouped_sampled_routing_diff"][0] == 0


def test_fope_rl_on_te_is_one_clear_error(tmp_path):
    from megatron_s1.config import load_config
    from megatron_s1.config.schema import ConfigError
    from megatron_s1.rl.trainer import RLTrainer

    cfg = load_config(None, [f"run.dir={tmp_path}", "model.preset=tiny-dense", "model.position_embedding_type=fope",
                             "model.spec=te", "rl.task=toy_copy"])
    with pytest.raises(ConfigError, match="fope needs model.spec=local"):
        RLTrainer(cfg)
