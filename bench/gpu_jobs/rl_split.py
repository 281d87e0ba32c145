"""Mean RL step time split (rollout / log-prob / update) per run dir, from rl_metrics.jsonl; the first two steps
(CUDA/NCCL warm-up, kernel autotuning) are left out."""
import json
import os
import sys

KEYS = ("step_s", "rollout_s", "logprob_s", "update_s", "rollout_tokens_per_s", "kl_train_rollout",
        "kl_train_rollout_replay", "routing_mismatch", "rollout_peak_gb", "rollout_end_gb", "logprob_peak_gb",
        "update_peak_gb")
for run in sys.argv[1:]:
    path = os.path.join(run, "rl_metrics.jsonl")
    if not os.path.exists(path):
        print(f"{run}: no rl_metrics.jsonl")
        continue
    recs = [json.loads(line) for line in open(path)][2:]
    if not recs:
        print(f"{run}: fewer than 3 steps")
        continue
    means = {k: sum(r[k] for r in recs if k in r) / max(1, sum(k in r for r in recs)) for k in KEYS}
    print(os.path.basename(run), f"steps {len(recs)}", " ".join(f"{k} {v:.4g}" for k, v in means.items()))
