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
    # Sampled (T=0.8 + top-p 0.9 / T=1 / top-k 5 rows): still the trainer's tempered full-vocabulary log-probs. The
    # unfiltered T=1 group keeps the T=1 tolerance. Filtered groups: top-p / top-k sampling picks the tokens whose
    # bf16 logit error is positive, so E[log q - log p] over them grows with the filter's selectivity (H100, session
    # 12: 0.0115 over all three groups); the bound is 2e-2 or a quarter of the smallest gap a wrong variant
    # (renormalised over the kept set, or untempered) shows on the same tokens, whichever is larger.
    gap = out["gap_by_group"]
    renormalised, untempered = out["wrong_renormalised_gap_by_group"], out["wrong_untempered_gap_by_group"]
    assert abs(gap[1]) < 1e-2, out
    for g, wrong in ((0, [renormalised[0], untempered[0]]), (2, [renormalised[2]])):
        assert abs(gap[g]) < max(2e-2, 0.25 * min(abs(w) for w in wrong)), (g, out)
        assert abs(gap[g]) < 0.5 * abs(renormalised[g]), (g, out)
    assert out["released_gb"] > 0 and out["restore_same"], out
