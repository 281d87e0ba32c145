"""Helper (subprocess): routing record/replay on a tiny MoE, colocated generation shapes, and an RL step through
the OpenAI-compatible engine (URL in argv[2]). Prints one JSON line."""
import json
import sys

import torch


def main():
    from megatron_s1.config import load_config
    from megatron_s1.rl.rollout import pad_batch, routing_record, routing_replay, select_routing
    from megatron_s1.rl.trainer import RLTrainer

    run_dir, url = sys.argv[1], sys.argv[2]
    cfg = load_config(None, [f"run.dir={run_dir}", "model.preset=tiny-moe", "model.params_dtype=fp32",
                             "model.spec=local", "logging.tensorboard=false", "rl.task=toy_copy",
                             "rl.routing_replay=true", "rl.max_new_tokens=3", "rl.samples_per_prompt=3",
                             "rl.prompts_per_step=2", "checkpoint.save_final=false", "data.seq_length=16"])
    rl = RLTrainer(cfg, rollout_dtype="bf16")
    out = {}
    # (1) colocated generation: P*G samples, rollout log-probs per token, routing [L, N, k] per layer
    ids = [rl.tok.encode("copy 3="), rl.tok.encode("copy 12=")]
    roll = rl.engine.generate(ids, 3, 3, allowed_tokens=rl.allowed_list, generator=torch.Generator().manual_seed(0))
    out["n"] = len(roll.response_ids)
    out["lens_ok"] = all(len(r) == len(lp) and 1 <= len(r) <= 3 for r, lp in zip(roll.response_ids,
                                                                                    roll.rollout_logprobs))
    out["digits_only"] = all(t in rl.allowed_list for r in roll.response_ids for t in r)
    out["routing_shape"] = [list(t.shape) for t in roll.routing]
    # (2) replay: recorded ids reproduce the forward exactly; perturbed ids change it
    model = rl.model
    batch = pad_batch(roll.prompt_ids, roll.response_ids, rl.pad)
    with torch.no_grad():
        with routing_record() as rr:
            ref = model(*batch[:3])
            rec = [t.reshape(batch[0].shape[1], batch[0].shape[0], -1) for t in rr.get_recorded_data()]
        with routing_replay(rec):
            same = model(*batch[:3])
        flipped = [(t + 1) % cfg.model.num_moe_experts for t in rec]
        with routing_replay(flipped):
            other = model(*batch[:3])
        rows = [1, 4]
        with routing_replay(select_routing(rec, rows)):
            sub = model(*pad_batch([roll.prompt_ids[i] for i in rows], [roll.response_ids[i] for i in rows], rl.pad,
                                   batch[0].shape[1])[:3])
    from megatron_s1.models.precision import use_fp32_output_layer

    head = rl.model.module.output_layer
    orig_forward = head.forward
    use_fp32_output_layer(rl.model.module)
    with torch.no_grad(), routing_replay(rec):
        fp32_head = model(*batch[:3])
    head.forward = orig_forward
    out["fp32_head_diff"] = float((fp32_head - ref).abs().max())
    out["replay_same"] = float((same - ref).abs().max())
    out["replay_flipped"] = float((other - ref).abs().max())
    out["replay_subset"] = float((sub - ref[rows]).abs().max())
    # (3) offline filtering over a jsonl of prompts (pass rates over 8 rollouts of the current policy)
    import os
    src = os.path.join(run_dir, "prompts.jsonl")
    with open(src, "w") as f:
        for d in range(4):
            f.write(json.dumps({"prompt": f"copy {d}=", "reference": str(d), "task": "toy_copy"}) + "\n")
    rep = rl.offline_filter(src, os.path.join(run_dir, "kept.jsonl"), n=8)
    kept = [json.loads(line) for line in open(os.path.join(run_dir, "kept.jsonl"))]
    out["offline"] = [rep["prompts"], rep["kept"], sum(rep["pass_rate_histogram"].values()), len(kept),
                      all(0.25 < k["pass_rate"] < 1.0 for k in kept)]
    # (4) one RL step end to end with the local engine, then two with the external engine + weight updates
    rec1 = rl.step()
    out["local_step_keys"] = sorted(k for k in ("kl_train_rollout", "kl_train_rollout_replay") if k in rec1)
    cfg2 = load_config(None, [f"run.dir={run_dir}/ext", "model.preset=tiny-moe", "model.params_dtype=fp32",
                              "model.spec=local", "logging.tensorboard=false", "rl.task=toy_copy",
                              "rl.engine=openai", f"rl.engine_url={url}", "rl.max_new_tokens=2",
                              "rl.routing_replay=true",
                              "rl.prompts_per_step=2", "rl.samples_per_prompt=2", "rl.online_filter=false",
                              "train.steps=2", "checkpoint.keep_last=1", "checkpoint.save_final=false"])
    rl.t.checkpointer.close()
    rl2 = RLTrainer.__new__(RLTrainer)  # share the process group / model-parallel state of the first one
    RLTrainer.__init__(rl2, cfg2)
    summary = rl2.run()
    out["ext_steps"] = summary["steps"]
    out["ext_replay_kl"] = "kl_train_rollout_replay_mean" in summary
    out["ext_version"] = json.load(__import__("urllib.request").request.urlopen(url + "/v1/models"))["version"]
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
