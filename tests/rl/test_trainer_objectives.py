"""The RL objectives inside `megatron-s1 rl`: config checks, per-step metrics, OREAL's reference policy on resume."""
import math

import pytest

from megatron_s1.config import load_config
from megatron_s1.config.schema import ConfigError
from megatron_s1.rl.trainer import check_objective
from tests.conftest import run_cli
from tests.rl.conftest import RL_RECIPE, rl_records


@pytest.mark.parametrize("overrides, message", [
    (["rl.kl_cov_coef=0.01"], "with rl.mini_batches=1 does nothing"),
    (["rl.kl_cov_coef=0.01", "rl.mini_batches=2", "rl.kl_cov_fraction=0"], "rl.kl_cov_fraction must be in (0, 1]"),
    (["rl.grpo_std=sample"], "rl.grpo_std must be unbiased or population"),
    (["rl.oreal.variant=official"], "rl.oreal.variant must be paper or xtuner"),
    (["rl.oreal.kl_coef=-1"], "must be >= 0"),
])
def test_objective_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_objective(load_config(RL_RECIPE, overrides).rl)
    check_objective(load_config(RL_RECIPE, ["rl.kl_cov_coef=0.01", "rl.mini_batches=2"]).rl)  # valid


def test_kl_cov_without_mini_batches_is_one_error_line(tmp_path):
    proc = run_cli(["rl", "--config", RL_RECIPE, f"run.dir={tmp_path}", "rl.kl_cov_coef=0.01"], check=False)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(err) == 1 and "set rl.mini_batches >= 2" in err[0], proc.stderr[-2000:]


def test_oreal_reference_kl_and_kl_cov_metrics_across_resume(tmp_path):
    """OREAL + KL to the reference policy + KL-Cov, 2 mini-batches: 2 steps, then resumed for a third."""
    common = ["rl", "--config", RL_RECIPE, f"run.dir={tmp_path}", "rl.task=toy_copy", "rl.prompts_per_step=8",
              "rl.algorithm=oreal", "rl.oreal.kl_coef=0.01", "rl.oreal.advantage_weighted_positives=true",
              "rl.mini_batches=2", "rl.kl_cov_coef=0.5", "rl.kl_cov_fraction=0.2", "checkpoint.save_final=true"]
    run_cli(common + ["train.steps=2"])
    run_cli(common + ["train.steps=3"])
    recs = rl_records(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3]
    # The reference is the starting policy: KL 0 before the first update, > 0 after it -- also right after the
    # resume (a reference taken from the resumed weights would give 0 at step 3).
    assert recs[0]["kl_ref"] == 0.0 and recs[1]["kl_ref"] > 0 and recs[2]["kl_ref"] > 0
    for r in recs:
        # KL-Cov acts from the second mini-batch on: the first mini-batch's term is exactly 0 (pi = pi_old)
        assert r["first_update_logp_maxdiff"] == 0.0 and r["kl_cov_penalty_first"] == 0.0
        assert r["kl_cov_active_minibatches"] == 1 and r["kl_cov_penalty"] > 0 and r["kl_cov_abs_logratio"] > 0
        assert 0.1 < r["kl_cov_selected_frac"] <= 0.2  # floor(0.2 n) of n tokens per mini-batch
        assert 0 < r["entropy"] < math.log(10) + 1e-6  # toy_copy decodes digits only
        assert "icepop_masked_frac" not in r and r["ref_kl_loss"] >= 0
