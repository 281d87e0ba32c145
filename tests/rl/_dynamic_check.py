"""Helper (subprocess, GPU): DynamicEngine against LocalEngine and the trainer on a tiny MoE. Prints diagnostics to
stderr and one RESULT JSON line. argv: RUN_DIR [overrides...]."""
import json
import os
import sys
import traceback

import torch


def _trainer(run_dir, extra):
    from megatron_s1.config import load_config
    from megatron_s1.rl.trainer import RLTrainer

    # A free-form task: no allowed-token mask, so the trainer scores the full vocabulary the dynamic engine samples
    # (toy_copy's digits-only mask gave every other token -1e4).
    os.makedirs(run_dir, exist_ok=True)
    src = os.path.join(run_dir, "free.jsonl")
    with open(src, "w") as f:
        f.write(json.dumps({"prompt": "Once upon a time", "reference": "x", "task": "math"}) + "\n")
    cfg = load_config(None, [f"run.dir={run_dir}", "logging.tensorboard=false", f"rl.task=jsonl:{src}",
                             "data.seq_length=64", "model.params_dtype=bf16", "checkpoint.save_final=false", "rl.local_engine=static",
                             *extra, *sys.argv[2:]])
    return RLTrainer(cfg, rollout_dtype="fp32")


def _scored(rollout, pad):
    """(padded batch, response mask, the engine's log-probs laid out on the mask) of a rollout."""
    from megatron_s1.rl.rollout import pad_batch

    batch = pad_batch(rollout.prompt_ids, rollout.response_ids, pad)
    mask = batch[3]
    roll = torch.zeros_like(mask)
    for i in range(len(rollout.response_ids)):
        idx = mask[i].nonzero().squeeze(-1)
        roll[i, idx] = torch.tensor(rollout.rollout_logprobs[i][:len(idx)])
    return batch, mask, roll


def main():
    from megatron_s1.rl.dynamic_engine import DynamicEngine
    out = {}
    from megatron_s1.rl.dynamic_engine import dynamic_engine_available

    print(f"[diag] dynamic_engine_available: {dynamic_engine_available()}", file=sys.stderr, flush=True)
    rl = _trainer(sys.argv[1], ["model.preset=tiny-moe", "rl.routing_replay=true"])
    module = rl.engine.model
    cfg = getattr(getattr(module, "module", module), "config", None)
    print(f"[diag] model {type(module).__name__} params_dtype={getattr(cfg, 'params_dtype', None)} "
          f"moe_replay={getattr(cfg, 'moe_enable_routing_replay', None)} "
          f"attn_backend={getattr(cfg, 'attention_backend', None)}", file=sys.stderr, flush=True)
    local = rl.engine
    dyn = DynamicEngine(rl.model, rl.eos, rl.pad, None, record_routing=True, kv_buffer_gb=1.0, fallback=local)
    prompts = [rl.tok.encode(t) for t in ["copy 3=", "Once upon a time, in a land far", "The answer is"]]
    greedy = dict(temperature=1.0, top_k=1, top_p=1.0)
    ref = local.generate(prompts, 2, 12, generator=torch.Generator().manual_seed(1), **greedy)
    got = first_greedy = dyn.generate(prompts, 2, 12, generator=torch.Generator().manual_seed(1), **greedy)
    print(f"[diag] dyn engine ctx max_len={dyn._max_len} "
          f"lens={[len(r) for r in got.response_ids]} local_lens={[len(r) for r in ref.response_ids]}",
          file=sys.stderr, flush=True)
    out["valid"] = (len(got.response_ids) == 6 and all(len(a) == len(b) for a, b in
                                                       zip(got.response_ids, got.rollout_logprobs))
                    and all(len(r) >= 1 for r in got.response_ids))
    # Diagnostics only: in bf16 the two engines' attention kernels (TE vs FlashAttention-4) can flip near-tied
    # argmaxes of a random-init model, after which the rows diverge.
    out["greedy_same"] = got.response_ids == ref.response_ids
    out["greedy_first_token_same"] = [a[:1] == b[:1] for a, b in zip(got.response_ids, ref.response_ids)]
    # The contract: the trainer's recomputed log-probs on the dynamic engine's (T=1, unfiltered) rollout equal the
    # engine's (no replay / with the dynamic engine's routing).
    got = dyn.generate(prompts, 2, 12, temperature=1.0, top_p=1.0, top_k=0, generator=torch.Generator().manual_seed(4))
    batch, mask, roll = _scored(got, rl.pad)
    for name, routing in (("no_replay", None), ("replay", got.routing)):
        lp = rl._train_forward(batch, routing, 1.0)
        out[f"kl_{name}"] = float(((roll - lp) * mask).sum() / mask.sum())
    out["routing_recorded"] = got.routing is not None
    # sampled (T=0.8, top-p 0.9), per-row settings; then release / restore
    s = dyn.generate(prompts, 4, [8, 16, 24], temperature=[0.8, 1.0, 1.0], top_p=[0.9, 1.0, 1.0], top_k=[0, 0, 5],
                     generator=torch.Generator().manual_seed(2))
    out["per_prompt_len_ok"] = all(len(r) <= [8, 16, 24][i // 4] for i, r in enumerate(s.response_ids))
    # ... and their log-probs are still the trainer's (tempered per row, full vocabulary despite top-p / top-k)
    from megatron_s1.rl.rollout import RowSampling

    batch, mask, roll = _scored(s, rl.pad)
    temps = RowSampling.expand(12, 4, [0.8, 1.0, 1.0], [0.9, 1.0, 1.0], [0, 0, 5], [8, 16, 24]).temperature_of_rows()
    lp = rl._train_forward(batch, s.routing, temps.to(roll.device) if torch.is_tensor(temps) else temps)
    d = (roll - lp) * mask
    out["kl_tempered_filtered"] = float(d.sum() / mask.sum())
    # Per sampling group (T=0.8 top-p 0.9 / T=1 / top-k 5), beside the gap each plausible wrong variant would show
    # on the same tokens: log-probs renormalised over the top-p / top-k set, and untempered (T=1) log-probs.
    from megatron_s1.rl.pipeline import run_microbatch
    from megatron_s1.rl.rollout import filter_logits, token_logprobs

    rows = [slice(0, 4), slice(4, 8), slice(8, 12)]

    def by_group(x):
        return [float((x[r] * mask[r]).sum() / mask[r].sum()) for r in rows]

    tokens, positions, amask = (x.to(rl.device) for x in batch[:3])
    with torch.no_grad():
        logits = run_microbatch(rl.model, lambda m: m(tokens, positions, amask), tokens.shape[1], tokens.shape[0])
    row_temps = torch.as_tensor(temps, dtype=torch.float32, device=logits.device).view(-1, 1, 1)
    z = logits.float() / row_temps

    def per_position(group_values):  # one value per row group -> one per flattened (row, position)
        return torch.tensor([group_values[i // 4] for i in range(12)], device=z.device).repeat_interleave(z.shape[1])

    kept = filter_logits(z.reshape(-1, z.shape[-1]), per_position([0, 0, 5]), per_position([0.9, 1.0, 1.0]))
    kept_lp = token_logprobs(kept.view_as(z), tokens)  # (already tempered; -1e4 outside the kept set)
    renorm_gap = torch.where(kept_lp > -1e4, kept_lp - token_logprobs(logits, tokens, row_temps), 0.0).cpu()
    out["gap_by_group"] = by_group(roll - lp)
    out["wrong_renormalised_gap_by_group"] = by_group(renorm_gap)
    out["wrong_untempered_gap_by_group"] = by_group(rl._train_forward(batch, s.routing, 1.0) - lp)
    pos = mask.cumsum(1) * mask  # 1-based response position of each response token
    out["gap_by_position"] = [round(float(d[pos == k].mean()), 5) for k in range(1, 25) if (pos == k).any()]
    # a task vocabulary (allowed_tokens): every sampled token inside it, the first greedy token as LocalEngine's
    allowed = sorted(set(range(10, 60)) | {rl.eos})
    m_ref = local.generate(prompts, 1, 6, allowed_tokens=allowed, generator=torch.Generator().manual_seed(5), **greedy)
    m = dyn.generate(prompts, 2, 6, allowed_tokens=allowed, generator=torch.Generator().manual_seed(5))
    out["allowed_ok"] = all(t in allowed for r in m.response_ids for t in r) and all(m.response_ids)
    m1 = dyn.generate(prompts, 1, 6, allowed_tokens=allowed, generator=torch.Generator().manual_seed(5), **greedy)
    out["allowed_first_token_same"] = [a[:1] == b[:1] for a, b in zip(m1.response_ids, m_ref.response_ids)]
    # generate suspends at its end: memory now vs. with the KV cache restored
    after = torch.cuda.memory_allocated()
    dyn.restore()
    before = torch.cuda.memory_allocated()
    dyn.release()
    out["released_gb"] = (before - after) / 2 ** 30
    out["release_again_gb"] = (before - torch.cuda.memory_allocated()) / 2 ** 30
    print(f"[diag] memory: restored {before / 2**30:.3f} GiB, released {after / 2**30:.3f} GiB", file=sys.stderr)
    torch.cuda.reset_peak_memory_stats()
    again = dyn.generate(prompts, 2, 12, generator=torch.Generator().manual_seed(1), **greedy)
    out["restore_same"] = again.response_ids == first_greedy.response_ids
    out["peak_rollout_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()  # (full chain: the first GPU run is where this meets the real engine)
        raise
