"""DynamicEngine (megatron.core DynamicInferenceEngine) on a tiny MoE, TE spec: valid Rollout, greedy == LocalEngine,
log-probs == the trainer's (small KL), routing recorded, KV cache released and restored. Skipped without CUDA + TE."""
import importlib.util

import pytest
import torch

from tests.rl.conftest import run_check

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None,
    reason="needs a CUDA GPU with TransformerEngine")


def _available():
    from megatron_s1.rl.dynamic_engine import dynamic_engine_available

    return dynamic_engine_available()


def test_dynamic_engine_matches_local_engine_and_trainer(tmp_path):
    ok, why = _available()
    if not ok:
        pytest.skip(f"dynamic engine cannot run: {why}")
    out = run_check("_dynamic_check.py", tmp_path, "model.spec=te", timeout=400)
    assert out["valid"] and out["per_prompt_len_ok"]
    assert abs(out["kl_no_replay"]) < 1e-2 and abs(out["kl_replay"]) < 1e-2, out
    assert out["routing_recorded"], out
    assert out["allowed_ok"], out
    assert abs(out["kl_tempered_filtered"]) < 1e-2, out  # T=0.8 + top-p / top-k rows: still the trainer's log-probs
    assert out["released_gb"] > 0 and out["restore_same"], out
