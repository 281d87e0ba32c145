"""Helper (subprocess): the colocated engine's KV-cached decoding against the full re-forward, on a tiny MoE
(RoPE) and a tiny dense model with FoPE. Prints one JSON line."""
import json
import sys

import torch


def _trainer(run_dir, extra, first=None):
    from megatron_s1.config import load_config
    from megatron_s1.rl.trainer import RLTrainer

    # extra command-line overrides (e.g. model.spec=te for the GPU run of tests/gpu) come last
    cfg = load_config(None, [f"run.dir={run_dir}", "model.params_dtype=fp32", "model.spec=local",
                             "logging.tensorboard=false", "rl.task=toy_copy", "data.seq_length=16",
                             "checkpoint.save_final=false", *extra, *sys.argv[2:]])
    if first is None:
        return RLTrainer(cfg, rollout_dtype="fp32")
    first.t.checkpointer.close()
    rl = RLTrainer.__new__(RLTrainer)  # share the process group of the first one
    RLTrainer.__init__(rl, cfg, rollout_dtype="fp32")
    return rl


def _both(engine, prompts, n, new, **kw):
    out = []
    for kv in (False, True):
        engine.kv_cache = kv
        out.append(engine.generate(prompts, n, new, generator=torch.Generator().manual_seed(7), **kw))
    return out


def _logp_diff(a, b):
    return max(abs(x - y) for la, lb in zip(a.rollout_logprobs, b.rollout_logprobs) for x, y in zip(la, lb))


def _routing_diff(a, b):
    """Differing top-k sets over the positions both engines forwarded with real tokens."""
    max_p = max(len(p) for p in a.prompt_ids)
    diff = total = 0
    for i, (p, r) in enumerate(zip(a.prompt_ids, a.response_ids)):
        lo, hi = max_p - len(p), max_p + len(r) - 1  # the last sampled token is never forwarded when cached
        for ta, tb in zip(a.routing, b.routing):
            x, y = ta[lo:hi, i].sort(-1).values, tb[lo:hi, i].sort(-1).values
            diff += int((x != y).any(-1).sum())
            total += hi - lo
    return diff, total


def check(rl, prefix, out):
    from megatron_s1.rl.rollout import pad_batch

    eng, tok = rl.engine, rl.tok
    # prompts of different lengths: left padding differs per row
    prompts = [tok.encode(t) for t in ["copy 3=", "Once upon a time, in a land far", "The answer is"]]
    # (1) per-row RoPE positions: a left-padded row computes what it computes alone
    rl.model.eval()
    device = next(rl.model.parameters()).device
    with torch.no_grad():
        both = rl.model(*(t.to(device) for t in pad_batch(prompts, [[5]] * 3, rl.pad)[:3]))
        alone = rl.model(*(t.to(device) for t in pad_batch(prompts[0:1], [[5]], rl.pad)[:3]))
    out[prefix + "padded_vs_alone"] = float((both[0, -alone.shape[1]:] - alone[0]).abs().max())
    # (2) greedy (top_k=1): same tokens, same log-probs; EOS = row 0's 4th greedy token, so rows finish early
    eng.eos_id = rl.eos
    ref = _both(eng, prompts, 1, 10, top_k=1)[0]
    eng.eos_id = ref.response_ids[0][3]
    full, cached = _both(eng, prompts, 1, 10, top_k=1)
    eng.eos_id = rl.eos
    out[prefix + "greedy_same"] = full.response_ids == cached.response_ids
    out[prefix + "greedy_lens"] = [len(r) for r in cached.response_ids]
    out[prefix + "greedy_finished"] = cached.finished
    out[prefix + "greedy_logp_diff"] = _logp_diff(full, cached)
    # (3) sampling with a fixed seed (full vocabulary, temperature 1): same tokens, log-probs within 1e-5
    full, cached = _both(eng, prompts, 2, 10)
    out[prefix + "sampled_same"] = full.response_ids == cached.response_ids
    out[prefix + "sampled_logp_diff"] = _logp_diff(full, cached)
    if full.routing is not None:
        out[prefix + "routing_shapes"] = [[list(t.shape) for t in x.routing] for x in (full, cached)]
        out[prefix + "routing_diff"] = list(_routing_diff(full, cached))
    # (4) prompts of one length (no left padding): the batches the TE spec decodes with the cache
    same = [p[:4] for p in prompts]
    full, cached = _both(eng, same, 2, 10, top_k=1)
    out[prefix + "equal_used_cache"] = [full.meta["kv_cache"], cached.meta["kv_cache"]]
    out[prefix + "equal_same"] = full.response_ids == cached.response_ids
    out[prefix + "equal_logp_diff"] = _logp_diff(full, cached)
    out[prefix + "padded_used_cache"] = _both(eng, prompts, 1, 2)[1].meta["kv_cache"]
    # (5) the TE-spec rule forced here: prompts of three lengths decoded one equal-length group at a time, row 0
    # stopping early at a forced EOS; tokens, log-probs and routing must equal the full re-forward of the batch
    applied, eng.decode_mask_applied = eng.decode_mask_applied, False
    eng.eos_id = ref.response_ids[0][3]
    full, grouped = _both(eng, [prompts[1], prompts[0], prompts[2], prompts[0]], 2, 10, top_k=1)
    # sampled (full vocabulary): each row's draws depend only on its seed and step, so grouping changes nothing
    eng.eos_id = rl.eos
    full_s, grouped_s = _both(eng, prompts, 2, 10)
    eng.decode_mask_applied = applied
    out[prefix + "grouped_sampled_same"] = full_s.response_ids == grouped_s.response_ids
    out[prefix + "grouped_sampled_logp_diff"] = _logp_diff(full_s, grouped_s)
    if full_s.routing is not None:
        out[prefix + "grouped_sampled_routing_diff"] = list(_routing_diff(full_s, grouped_s))
    out[prefix + "grouped_mode"] = grouped.meta["kv_cache"]
    out[prefix + "grouped_same"] = full.response_ids == grouped.response_ids
    out[prefix + "grouped_lens"] = [len(r) for r in grouped.response_ids]
    out[prefix + "grouped_logp_diff"] = _logp_diff(full, grouped)
    if full.routing is not None:
        out[prefix + "grouped_routing_diff"] = list(_routing_diff(full, grouped))


def main():
    run_dir = sys.argv[1]
    out = {}
    moe = _trainer(run_dir + "/moe", ["model.preset=tiny-moe", "rl.routing_replay=true"])
    check(moe, "moe_", out)
    if "model.spec=te" in sys.argv[2:]:  # FoPE RL is refused on the TE spec
        print("RESULT " + json.dumps(out), flush=True)
        return
    dense = _trainer(run_dir + "/fope", ["model.preset=tiny-dense", "model.position_embedding_type=fope"], moe)
    check(dense, "fope_", out)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
