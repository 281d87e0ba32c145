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


@pytest.mark.parametrize("engine", ["static", "dynamic"])
def test_rl_step_reports_peak_memory_per_phase(tmp_path, engine):
    """rl_metrics.jsonl carries rollout / log-prob / update peak GB on a GPU, with either colocated engine (the
    dynamic one where it can run: flash-attn); after the rollout the engine holds no KV cache any more."""
    import json

    from megatron_s1.rl.dynamic_engine import dynamic_engine_available
    from tests.conftest import run_cli

    if engine == "dynamic" and not dynamic_engine_available()[0]:
        pytest.skip(f"dynamic engine cannot run: {dynamic_engine_available()[1]}")
    run_cli(["rl", "--config", "examples/rl/tiny_cpu.yaml", "train.steps=3", "model.spec=te",
             "model.params_dtype=bf16", f"rl.local_engine={engine}", f"run.dir={tmp_path}"])
    with open(tmp_path / "rl_metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 3
    for rec in records:
        for phase in ("rollout", "logprob", "update"):
            assert rec[f"{phase}_peak_gb"] > 0 and rec[f"{phase}_end_gb"] <= rec[f"{phase}_peak_gb"] + 1e-6, rec
        # what the update phase starts from is what the rollout left: weights + optimizer state, no KV cache
        assert rec["rollout_end_gb"] < rec["rollout_peak_gb"]
