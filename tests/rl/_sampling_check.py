"""Helper (subprocess): per-task sampling settings (rl.sampling) in one mixed-task batch. Prints one JSON line.

argv: RUN_DIR [extra overrides...]"""
import json
import os
import sys

import torch


def main():
    from megatron_s1.config import load_config
    from megatron_s1.rl.trainer import RLTrainer

    run_dir = sys.argv[1]
    src = os.path.join(run_dir, "mixed.jsonl")
    os.makedirs(run_dir, exist_ok=True)
    with open(src, "w") as f:
        for text, task in (("Once upon a time", "math"), ("copy 3=", "toy_copy"), ("2+2=", "math"),
                           ("copy 7=", "toy_copy")):
            f.write(json.dumps({"prompt": text, "reference": "3", "task": task}) + "\n")
    cfg = load_config(None, [f"run.dir={run_dir}", "model.preset=tiny-moe", "model.params_dtype=fp32",
                             "model.spec=local", "logging.tensorboard=false", f"rl.task=jsonl:{src}",
                             "rl.prompts_per_step=4", "rl.samples_per_prompt=3", "rl.max_new_tokens=6",
                             "rl.online_filter=false", "rl.routing_replay=true", "checkpoint.save_final=false",
                             'rl.sampling={"toy_copy": {"temperature": 0.5, "top_k": 3, "max_new_tokens": 2}}',
                             *sys.argv[2:]])
    rl = RLTrainer(cfg, rollout_dtype="fp32")
    out = {}
    # (1) the engine: per-prompt settings in one batch vs each prompt alone with its own settings (greedy rows:
    # identical tokens and log-probs; sampled rows: lengths within their own limits)
    eng = rl.engine
    a, b = rl.encode({"prompt": "Once upon a time"})[0], rl.encode({"prompt": "copy 3="})[0]
    for kv in (True, False):
        eng.kv_cache = kv
        mixed = eng.generate([a, b], 2, [5, 2], [1.0, 0.7], [1.0, 0.9], [1, 0],
                             generator=torch.Generator().manual_seed(3))
        alone = eng.generate([a], 2, 5, top_k=1, generator=torch.Generator().manual_seed(3))
        out[f"greedy_equal_{kv}"] = mixed.response_ids[:2] == alone.response_ids
        out[f"greedy_logp_diff_{kv}"] = max(abs(x - y) for la, lb in zip(mixed.rollout_logprobs[:2],
                                                                          alone.rollout_logprobs)
                                            for x, y in zip(la, lb))
        out[f"lengths_{kv}"] = [len(r) for r in mixed.response_ids]
    eng.kv_cache = True
    # (2) RL steps on the mixed batch: rollout log-probs (each row at its own temperature) = training log-probs
    recs = [rl.step() for _ in range(2)]
    out["logp_maxdiff"] = max(r["logp_train_rollout_maxdiff"] for r in recs)
    out["first_update_maxdiff"] = max(r["first_update_logp_maxdiff"] for r in recs)
    out["kl_replay"] = max(r["kl_train_rollout_replay"] for r in recs)
    out["temperatures"] = sorted({s.temperature for s in rl._prompt_sampling(rl.source.records)})
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
