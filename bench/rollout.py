"""Rollout throughput: LocalEngine (static KV cache) vs DynamicEngine (megatron.core DynamicInferenceEngine) vs HF
``generate`` (static cache), same GPU, same weights (the Megatron model is saved and converted to HF), one invocation.

    python bench/rollout.py --out OUT.json                 # quick shape
    python bench/rollout.py --full --out OUT.json          # the issue's shape: 64 prompts x G=8, prompts 256-1024,
                                                           # up to 2048 new tokens (long-tail mix), MoE 8L/2048/64e top-8
Tokens/s counts each row's generated tokens up to its own length limit (HF decodes a batch to its longest limit;
the surplus is not counted). Peak memory per engine via torch.cuda.max_memory_allocated.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback

import torch


def _sizes(full: bool, args):
    if full:
        return dict(prompts=64, g=8, pmin=256, pmax=1024, new=2048)
    return dict(prompts=args.prompts, g=args.g, pmin=args.pmin, pmax=args.pmax, new=args.new)


def _model_overrides(kind: str, full: bool):
    if kind == "moe":
        shape = ["model.preset=tiny-moe", "model.num_layers=8", "model.hidden_size=2048", "model.num_moe_experts=64",
                 "model.moe_router_topk=8", "model.moe_ffn_hidden_size=768", "model.ffn_hidden_size=6144",
                 "model.num_attention_heads=16", "model.num_query_groups=4", "model.kv_channels=128"]
        if not full:
            shape = ["model.preset=tiny-moe", "model.num_layers=4", "model.hidden_size=1024",
                     "model.num_moe_experts=16", "model.moe_router_topk=4", "model.moe_ffn_hidden_size=512",
                     "model.ffn_hidden_size=2048", "model.num_attention_heads=8", "model.num_query_groups=4",
                     "model.kv_channels=128"]
    else:
        shape = ["model.preset=tiny-dense", "model.num_layers=8" if full else "model.num_layers=4",
                 "model.hidden_size=2048" if full else "model.hidden_size=1024",
                 "model.ffn_hidden_size=6144" if full else "model.ffn_hidden_size=3072",
                 "model.num_attention_heads=16", "model.num_query_groups=4", "model.kv_channels=128"]
    return shape + ["model.vocab_size=32000", "model.max_position_embeddings=4096"]


def _lengths(n_prompts, g, pmin, pmax, new, seed):
    """Prompt lengths uniform in [pmin, pmax]; max new tokens long-tailed: most short, a few at the cap."""
    rnd = random.Random(seed)
    plen = [rnd.randint(pmin, pmax) for _ in range(n_prompts)]
    tail = [max(16, min(new, int(new * rnd.paretovariate(1.5) / 8))) for _ in range(n_prompts)]
    return plen, tail


def _timed(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = fn()
    torch.cuda.synchronize()
    return res, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2 ** 30


def bench_one(kind, args, sizes, run_dir):
    from megatron_s1.config import load_config
    from megatron_s1.rl.dynamic_engine import DynamicEngine
    from megatron_s1.rl.rollout import LocalEngine
    from megatron_s1.rl.trainer import RLTrainer

    seq = sizes["pmax"] + sizes["new"]
    cfg = load_config(None, [f"run.dir={run_dir}/{kind}", "logging.tensorboard=false", "rl.task=toy_copy",
                             f"data.seq_length={seq}", "data.micro_batch_size=1",
                             f"train.global_batch_tokens=[[0,{seq}]]", "model.spec=te", "model.params_dtype=bf16",
                             "rl.local_engine=static", *_model_overrides(kind, args.full)])
    rl = RLTrainer(cfg, rollout_dtype="bf16")
    vocab = cfg.model.vocab_size
    plen, tail = _lengths(sizes["prompts"], sizes["g"], sizes["pmin"], sizes["pmax"], sizes["new"], 0)
    rnd = random.Random(1)
    prompts = [[rnd.randrange(10, vocab) for _ in range(n)] for n in plen]
    useful = lambda ro: sum(min(len(r), tail[i // sizes["g"]]) for i, r in enumerate(ro.response_ids))  # noqa
    out = {"model": kind, "sizes": sizes, "params_m": sum(p.numel() for p in rl.model.parameters()) / 1e6}
    # eos id that random weights should rarely pick: lengths follow the tail mix
    eos = vocab - 1
    engines = {"current": LocalEngine(rl.model, eos, 0, torch.bfloat16, device=rl.device,
                                      decode_mask_applied=False),
               "dynamic": DynamicEngine(rl.model, eos, 0, torch.bfloat16, kv_buffer_gb=args.kv_gb)}
    for name, eng in engines.items():
        if name in args.skip:
            continue
        try:
            ro, dt, peak = _timed(lambda: eng.generate(prompts, sizes["g"], tail, temperature=1.0,
                                                       generator=torch.Generator().manual_seed(3)))
            tok = useful(ro)
            out[name] = {"tokens": tok, "seconds": dt, "tokens_per_s": tok / dt, "peak_gb": peak}
        except Exception as err:
            traceback.print_exc()
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        print(f"[bench] {kind} {name}: {out[name]}", flush=True)
        if name == "dynamic":
            eng.release()
            out["dynamic"]["after_generate_gb"] = torch.cuda.memory_allocated() / 2 ** 30
    if "hf" not in args.skip:
        try:
            out["hf"] = bench_hf(rl, prompts, tail, sizes, run_dir, kind, args)
        except Exception as err:
            traceback.print_exc()
            out["hf"] = {"error": f"{type(err).__name__}: {err}"}
        print(f"[bench] {kind} hf: {out['hf']}", flush=True)
    for other in ("current", "hf"):
        if "tokens_per_s" in out.get("dynamic", {}) and "tokens_per_s" in out.get(other, {}):
            out[f"dynamic_over_{other}"] = out["dynamic"]["tokens_per_s"] / out[other]["tokens_per_s"]
    rl.t.checkpointer.close()
    return out


def bench_hf(rl, prompts, tail, sizes, run_dir, kind, args):
    """The same weights through HF: save the Megatron checkpoint, convert, generate with the static cache in
    batches of rows sorted by length (left padded)."""
    from transformers import AutoModelForCausalLM

    from megatron_s1.conversion import mcore_to_hf

    ckpt = rl.t.save(blocking=True)
    hf_dir = os.path.join(run_dir, f"{kind}_hf")
    mcore_to_hf(ckpt, hf_dir, force=True, dtype="bf16")
    torch.cuda.empty_cache()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.bfloat16).cuda().eval()
    rows = sorted(((i // sizes["g"], p) for i, p in enumerate(p for p in prompts for _ in range(sizes["g"]))),
                  key=lambda x: tail[x[0]])
    bs = args.hf_batch

    def run():
        tok = 0
        for b in range(0, len(rows), bs):
            chunk = rows[b:b + bs]
            width = max(len(p) for _, p in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            att = torch.zeros_like(ids)
            for j, (_, p) in enumerate(chunk):
                ids[j, width - len(p):] = torch.tensor(p)
                att[j, width - len(p):] = 1
            new = max(tail[i] for i, _ in chunk)
            with torch.no_grad():
                gen = model.generate(ids.cuda(), attention_mask=att.cuda(), max_new_tokens=new, min_new_tokens=new,
                                     do_sample=True, cache_implementation="static", pad_token_id=0)
            tok += sum(min(gen.shape[1] - width, tail[i]) for i, _ in chunk)
        return tok

    tok, dt, peak = _timed(run)
    return {"tokens": tok, "seconds": dt, "tokens_per_s": tok / dt, "peak_gb": peak, "batch": bs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="the issue's shape (see above)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--g", type=int, default=4)
    ap.add_argument("--pmin", type=int, default=64)
    ap.add_argument("--pmax", type=int, default=256)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--models", default="moe,dense")
    ap.add_argument("--skip", default="", help="comma list of current,dynamic,hf")
    ap.add_argument("--kv-gb", type=float, default=8.0)
    ap.add_argument("--hf-batch", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: bench/rollout.py needs a CUDA GPU", file=sys.stderr)
        return 2
    args.skip = set(filter(None, args.skip.split(",")))
    sizes = _sizes(args.full, args)
    results = {"device": torch.cuda.get_device_name(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            try:
                results["runs"].append(bench_one(kind, args, sizes, tmp))
            except Exception as err:
                traceback.print_exc()
                results["runs"].append({"model": kind, "error": f"{type(err).__name__}: {err}"})
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
