"""The Intern-S1-Pro options (grouped router, STE router gradient, FoPE) run in the RL loop with routing replay."""
import json
import os

from tests.conftest import REPO, run_cli


def test_rl_with_grouped_router_ste_and_fope(tmp_path):
    proc = run_cli(["rl", "--config", os.path.join(REPO, "examples/rl/tiny_cpu.yaml"), f"run.dir={tmp_path}",
                    "train.steps=3", "train.log_interval=1", "model.moe_router_groups=2", "model.moe_router_ste=true",
                    "model.position_embedding_type=fope"])
    result = json.loads(proc.stdout.strip().splitlines()[-1])["result"]
    assert result["steps"] == 3 and result["skipped_steps"] == 0
    # Replaying the rollout's expert choices never increases the train/rollout mismatch.
    assert result["kl_train_rollout_replay_mean"] <= result["kl_train_rollout_mean"] + 1e-12
