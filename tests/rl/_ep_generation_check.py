"""Helper (torchrun, 2 ranks, gloo): colocated generation with expert parallelism when the EP ranks finish at
different steps. argv: run_dir, expert size (1 or 2).

Rank 0 declares its greedy first token to be EOS, so all its rows finish after one token while rank 1 decodes 4:
with EP=2 every forward is an all-to-all over both ranks, so rank 0 must keep forwarding (padding) until rank 1
is done (a hang otherwise). Checks per rank, with and without the KV cache: response lengths, rollout log-probs
= training log-probs (fp32), routing recorded in the rollout = routing of the training forward. Rank 0 prints
one RESULT line with both ranks' values."""
import json
import sys

import torch
import torch.distributed as dist


def main():
    from megatron_s1.config import load_config
    from megatron_s1.rl.rollout import pad_batch, routing_record, token_logprobs
    from megatron_s1.rl.trainer import RLTrainer, routed_positions, routing_mismatch

    run_dir, ep = sys.argv[1], int(sys.argv[2])
    cfg = load_config(None, [f"run.dir={run_dir}", "model.preset=tiny-moe", "model.params_dtype=fp32",
                             "model.spec=local", "logging.tensorboard=false", "rl.task=toy_copy",
                             "rl.routing_replay=true", f"parallel.expert={ep}", "data.seq_length=16",
                             "checkpoint.save_final=false"])
    rl = RLTrainer(cfg, rollout_dtype="fp32")
    rank = dist.get_rank()
    eng = rl.engine
    prompt = [rl.tok.encode("copy 3=" if rank == 0 else "copy 12=")]
    first = eng.generate(prompt, 2, 1, top_k=1, allowed_tokens=rl.allowed_list)
    if rank == 0:
        eng.eos_id = first.response_ids[0][0]  # greedy: every row of rank 0 ends after this token
    out = {}
    for kv in (True, False):
        eng.kv_cache = kv
        roll = eng.generate(prompt, 2, 4, top_k=1, allowed_tokens=rl.allowed_list)
        length = max(map(len, roll.prompt_ids)) + max(map(len, roll.response_ids))
        tokens, positions, mask, resp, _ = pad_batch(roll.prompt_ids, roll.response_ids, rl.pad, length)
        with torch.no_grad(), routing_record() as rr:
            lp = token_logprobs(rl.model(tokens, positions, mask), tokens, 1.0, rl.allowed)
            own = rl._recorded_routing(rr, length, len(roll.prompt_ids))
        ref = torch.zeros_like(lp)
        for i, r in enumerate(roll.rollout_logprobs):
            ref[i, resp[i].nonzero().squeeze(-1)] = torch.tensor(r)
        out[f"kv{int(kv)}"] = {
            "lens": [len(r) for r in roll.response_ids],
            "routing_len": [int(t.shape[0]) for t in roll.routing], "batch_len": length,
            "logp_maxdiff": float(((lp - ref).abs() * resp).max()),
            "routing_mismatch": routing_mismatch(own, roll.routing,
                                                 routed_positions(roll.prompt_ids, roll.response_ids, length)),
            "tokens": roll.response_ids}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, out)
    rl.t.checkpointer.close()
    if rank == 0:
        print("RESULT " + json.dumps(everyone), flush=True)


if __name__ == "__main__":
    main()
