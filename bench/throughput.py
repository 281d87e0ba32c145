"""Training throughput of megatron-s1 against HF transformers on the same model, data shape and GPU.

Runs, one after another in separate processes (so each gets the whole GPU):
  hf            transformers Qwen3Moe/Qwen3ForCausalLM, bf16, sdpa attention, fused AdamW
  ours-untuned  megatron-s1 with the TE spec and model.fusions=false (plain Megatron-Core defaults)
  ours-bf16     megatron-s1 with its defaults (fusions on, grouped GEMM, alltoall dispatcher)
  ours-fp8-*    the same with an FP8 recipe (delayed, tensorwise, blockwise)
and prints tokens/s, TFLOP/s per GPU, MFU and the ratio to the HF peer. Our numbers come from the
trainer's own metrics.jsonl (median over the timed steps), the HF numbers from CUDA-synchronised timing.

    python bench/throughput.py --shape probe-moe --runs hf,ours-untuned,ours-bf16,ours-fp8-blockwise
    python bench/throughput.py --shape probe-moe --nproc 2 --parallel parallel.expert=2 --runs ours-bf16
    python bench/throughput.py --accum 2 --runs hf,ours-bf16,mbs4 --variant 'mbs4:data.micro_batch_size=4' --profile-dir /tmp/p

A variant NAME:KEY=VALUE;... is ours-bf16 plus those overrides. --profile-dir saves, per run, the kernel table of
two steps after the warm-up (torch.profiler; our runs use train.profile_steps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Model shapes (our config keys). probe-moe is the issue's probe; dense-slice an Intern-S1-mini slice.
SHAPES = {
    "probe-moe": dict(num_layers=4, hidden_size=2048, num_attention_heads=16, num_query_groups=4, kv_channels=128,
                      ffn_hidden_size=6144, num_moe_experts=32, moe_router_topk=8, moe_ffn_hidden_size=768,
                      vocab_size=151936, seq_length=4096, micro_batch_size=2),
    # Qwen3-30B-A3B layers (hidden 2048, 32/4 heads, 128 experts top-8, moe_ffn 768). Memory of 8 layers (5.5B params):
    # ours keeps bf16 weights + fp32 main grads + fp32 master + 2 fp32 Adam moments = 18 B/param = ~99 GB, over an
    # 80 GB H100 (HF's all-bf16 AdamW: 8 B/param = 44 GB). 4 layers (3.1B params) = ~56 GB + ~4 GB activations fits:
    # use --layers 4 on 80 GB cards (bench/gpu_jobs/thr.sh does), 8 on the H200.
    "qwen3-30b-a3b-slice": dict(num_layers=8, hidden_size=2048, num_attention_heads=32, num_query_groups=4,
                                kv_channels=128, ffn_hidden_size=6144, num_moe_experts=128, moe_router_topk=8,
                                moe_ffn_hidden_size=768, vocab_size=151936, seq_length=4096, micro_batch_size=1),
    # Intern-S1-mini language model = Qwen3-8B shapes. 8 layers: 2.8B params, ours 18 B/param = ~50 GB + ~7 GB
    # activations (micro batch 1) fits 80 GB.
    "intern-s1-mini-slice": dict(num_layers=8, hidden_size=4096, num_attention_heads=32, num_query_groups=8,
                                 kv_channels=128, ffn_hidden_size=12288, num_moe_experts=None, vocab_size=151936,
                                 seq_length=4096, micro_batch_size=1),
    "dense-slice": dict(num_layers=4, hidden_size=4096, num_attention_heads=32, num_query_groups=8, kv_channels=128,
                        ffn_hidden_size=12288, num_moe_experts=None, vocab_size=151936, seq_length=4096,
                        micro_batch_size=1),
}
FP8 = {"ours-fp8-delayed": "delayed", "ours-fp8-tensorwise": "tensorwise", "ours-fp8-blockwise": "blockwise"}
HF_RUNS = ("hf", "hf-compile")
# Named variants (ours-bf16 plus overrides) any invocation can list in --runs; {mbs2x} is twice the shape's micro
# batch. The FP8 ones are the config switches of issue 24 (docs/performance.md, "FP8 that pays").
BUILTIN_VARIANTS = {
    "recompute-selective": ["model.recompute=selective", "data.micro_batch_size={mbs2x}"],
    "recompute-full": ["model.recompute=full", "data.micro_batch_size={mbs2x}"],
    "recompute-moe": ["model.recompute=moe", "data.micro_batch_size={mbs2x}"],
    "mbs2x": ["data.micro_batch_size={mbs2x}"],
    "fp8-experts": ["model.fp8=blockwise", "model.fp8_modules=experts"],
    "fp8-blockwise-pad": ["model.fp8=blockwise", "model.moe_router_padding_fp8=true"],
    "fp8-blockwise-param": ["model.fp8=blockwise", "model.fp8_param=true", "parallel.distributed_optimizer=true"],
    "fp8-blockwise-param-pad": ["model.fp8=blockwise", "model.fp8_param=true", "model.moe_router_padding_fp8=true",
                                "parallel.distributed_optimizer=true"],
    "fp8-tensorwise-param-pad": ["model.fp8=tensorwise", "model.fp8_param=true", "model.moe_router_padding_fp8=true",
                                 "parallel.distributed_optimizer=true"],
    # Our rowwise-FP8 grouped GEMM experts (torch._scaled_grouped_mm, device offsets, cached FP8 weights), BF16 elsewhere.
    "fp8-gmm": ["model.moe_experts=grouped_mm_fp8"],
    "wgrad-fused": ["model.moe_wgrad_fusion=true"],
    "fp8-gmm-wgrad-fused": ["model.moe_experts=grouped_mm_fp8", "model.moe_wgrad_fusion=true"],
    "fp8-experts-pad": ["model.fp8=blockwise", "model.fp8_modules=experts", "model.moe_router_padding_fp8=true"],
}
MOE_ONLY = ("recompute-moe", "fp8-experts", "fp8-gmm", "wgrad-fused", "fp8-gmm-wgrad-fused", "fp8-blockwise-pad", "fp8-blockwise-param-pad",
            "fp8-tensorwise-param-pad", "fp8-experts-pad")


def resolve_runs(runs: str, shape: dict, user_variants: dict) -> dict:
    """--runs names -> {run: extra overrides}; an unknown name or a MoE-only variant on a dense shape is an error."""
    known = {"ours-untuned", "ours-bf16", *HF_RUNS, *FP8}
    out = {}
    for run in [r for r in runs.split(",") if r]:
        if run in user_variants:
            out[run] = user_variants[run]
        elif run in BUILTIN_VARIANTS:
            if run in MOE_ONLY and not shape["num_moe_experts"]:
                raise ValueError(f"variant {run} needs an MoE shape")
            mbs2x = 2 * shape["micro_batch_size"]
            out[run] = [o.replace("{mbs2x}", str(mbs2x)) for o in BUILTIN_VARIANTS[run]]
        elif run in known:
            out[run] = []
        else:
            raise ValueError(f"unknown run {run!r}; choose from {', '.join(sorted(known | set(BUILTIN_VARIANTS)))} "
                             "or define it with --variant NAME:KEY=VALUE")
    return out


def hf_model(shape: dict):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    common = dict(hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_layers"],
                  num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_query_groups"],
                  head_dim=shape["kv_channels"], intermediate_size=shape["ffn_hidden_size"],
                  vocab_size=shape["vocab_size"], max_position_embeddings=shape["seq_length"], rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa", torch_dtype=torch.bfloat16)
    if shape["num_moe_experts"]:
        config = Qwen3MoeConfig(num_experts=shape["num_moe_experts"], num_experts_per_tok=shape["moe_router_topk"],
                                moe_intermediate_size=shape["moe_ffn_hidden_size"], norm_topk_prob=True,
                                output_router_logits=True, router_aux_loss_coef=1e-3, **common)
        return Qwen3MoeForCausalLM(config)
    return Qwen3ForCausalLM(Qwen3Config(**common))


def run_hf(shape: dict, steps: int, warmup: int, profile_dir: str | None = None, accum: int = 1,
           compile_model: bool = False) -> dict:
    """Child-process body: time HF training steps (compile_model: the model under torch.compile, default mode)."""
    import torch

    torch.manual_seed(0)
    model = hf_model(shape).to(device="cuda", dtype=torch.bfloat16)
    model.train()
    forward_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    b, s = shape["micro_batch_size"], shape["seq_length"]
    tokens = torch.randint(0, shape["vocab_size"], (b, s), device="cuda")
    times = []

    def step_once():
        for _ in range(accum):
            loss = forward_model(input_ids=tokens, labels=tokens).loss / accum
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for step in range(warmup + steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step_once()
        torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    if profile_dir:
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(2):
                step_once()
            torch.cuda.synchronize()
        with open(os.path.join(profile_dir, "hf-compile.txt" if compile_model else "hf.txt"), "w") as f:
            f.write(prof.key_averages().table(sort_by="self_device_time_total", row_limit=60,
                                              max_name_column_width=90))
    return {"tokens_per_s": accum * b * s / statistics.median(times), "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}


def ours_overrides(shape: dict, run: str, nproc: int, parallel: list[str], steps: int, run_dir: str,
                   variants: dict, accum: int = 1) -> list[str]:
    keys = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels", "ffn_hidden_size",
            "num_moe_experts", "moe_router_topk", "moe_ffn_hidden_size", "vocab_size")
    out = [f"model.{k}={'null' if shape.get(k) is None else shape[k]}" for k in keys if k in shape]
    dp = nproc
    for p in parallel:  # TP/PP/CP shrink the data-parallel group
        key, value = p.split("=")
        if key in ("parallel.tensor", "parallel.pipeline", "parallel.context"):
            dp //= int(value)
    # A variant that raises the micro batch past the global batch (mbs2x, recompute-*) raises the global batch with it.
    mbs = max([shape["micro_batch_size"] * accum] + [int(o.split("=", 1)[1]) for o in variants.get(run, [])
                                                     if o.startswith("data.micro_batch_size=")])
    batch_tokens = shape["seq_length"] * mbs * dp
    out += [f"model.max_position_embeddings={shape['seq_length']}", "model.spec=te", "model.params_dtype=bf16",
            f"data.seq_length={shape['seq_length']}", f"data.micro_batch_size={shape['micro_batch_size']}",
            "data.mock=true", f"train.global_batch_tokens=[[0, {batch_tokens}]]", f"train.steps={steps}",
            "train.log_interval=1", "train.eval_interval=0", "train.eval_iters=0", "checkpoint.save_final=false",
            "checkpoint.resume=false", "logging.tensorboard=false", "logging.progress_bar=off", f"run.dir={run_dir}",
            "optimizer.warmup_tokens=0", *parallel]
    if run == "ours-untuned":
        out.append("model.fusions=false")
    if run in FP8:
        out.append(f"model.fp8={FP8[run]}")
    out += variants.get(run, [])
    return out


def run_ours(shape, run, nproc, parallel, steps, warmup, variants, profile_dir=None, accum=1) -> dict:
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = ours_overrides(shape, run, nproc, parallel, warmup + steps, run_dir, variants, accum)
        if profile_dir:  # two steps after the timed ones, so the timing is not disturbed
            overrides += [f"train.steps={warmup + steps + 2}",
                          f"train.profile_steps=[{warmup + steps + 1},{warmup + steps + 2}]"]
        args = ["-m", "megatron_s1.cli", "train", *overrides]
        if nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *args]
        else:
            cmd = [sys.executable, *args]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stdout + proc.stderr)[-2500:]}
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f][warmup:warmup + steps]
        profile = None
        if profile_dir:
            table = os.path.join(run_dir, "profile", "kernels_rank0.txt")
            if os.path.exists(table):
                with open(table) as src, open(os.path.join(profile_dir, f"{run}.txt"), "w") as dst:
                    dst.write(src.read())
            summary = os.path.join(run_dir, "profile", "summary_rank0.json")
            if os.path.exists(summary):  # per step: wall, GPU busy / idle, kernel time per category
                with open(summary) as f:
                    profile = json.load(f)
                with open(os.path.join(profile_dir, f"{run}.summary.json"), "w") as f:
                    json.dump(profile, f, indent=1)
    out = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in records) / nproc,
           "peak_mem_gb": max(r["peak_mem_gb"] for r in records), "loss_last": records[-1]["loss"]}
    if profile is not None:
        out["profile"] = {k: profile[k] for k in ("wall_ms_per_step", "device_busy_ms_per_step",
                                                  "device_idle_ms_per_step", "kernel_ms_per_step")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="probe-moe", help="model + batch shape")
    parser.add_argument("--runs", default="hf,ours-untuned,ours-bf16,ours-fp8-blockwise",
                        help="comma list of: hf, ours-untuned, ours-bf16, " + ", ".join(FP8))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--nproc", type=int, default=1, help="GPUs for our runs (the HF peer uses one)")
    parser.add_argument("--parallel", nargs="*", default=[], help="extra overrides, e.g. parallel.expert=2")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:KEY=VALUE;KEY=VALUE: an extra run, ours-bf16 plus these overrides (repeatable)")
    parser.add_argument("--accum", type=int, default=1,
                        help="micro-batches per optimizer step (global batch = accum x the shape's micro batch); "
                             "a variant may raise data.micro_batch_size within that global batch")
    parser.add_argument("--profile-dir", help="save per-run kernel tables (torch.profiler) in this folder")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--layers", type=int, help="override the shape's number of layers (e.g. 4 for "
                        "qwen3-30b-a3b-slice on an 80 GB card)")
    parser.add_argument("--child-hf", choices=HF_RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = dict(SHAPES[args.shape])
    if args.layers is not None:
        if args.layers < 1:
            parser.exit(2, f"error: --layers must be >= 1, got {args.layers}\n")
        shape["num_layers"] = args.layers
    if args.child_hf:
        print(json.dumps(run_hf(shape, args.steps, args.warmup, args.profile_dir, args.accum,
                                compile_model=args.child_hf == "hf-compile")))
        return
    user_variants = {}
    for spec in args.variant:
        name, sep, overrides = spec.partition(":")
        if not sep or not name:
            parser.exit(2, f"error: --variant {spec!r} must look like NAME:KEY=VALUE;KEY=VALUE\n")
        user_variants[name] = [o for o in overrides.split(";") if o]
    try:
        variants = resolve_runs(args.runs, shape, user_variants)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    if args.profile_dir:
        os.makedirs(args.profile_dir, exist_ok=True)

    import torch

    from megatron_s1.config import load_config
    from megatron_s1.training.flops import peak_tflops, training_flops_per_token

    model_cfg = load_config(None, [f"model.{k}={'null' if v is None else v}" for k, v in shape.items()
                                   if k not in ("seq_length", "micro_batch_size")]).model
    flops_per_token = training_flops_per_token(model_cfg, shape["seq_length"])
    device = torch.cuda.get_device_name()
    results = {}
    for run in variants:
        if run in HF_RUNS:
            cmd = [sys.executable, __file__, "--shape", args.shape, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--accum", str(args.accum), "--child-hf", run,
                   "--layers", str(shape["num_layers"])]
            if args.profile_dir:
                cmd += ["--profile-dir", args.profile_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else \
                {"error": proc.stderr[-2500:]}
        else:
            res = run_ours(shape, run, args.nproc, args.parallel, args.steps, args.warmup, variants,
                           args.profile_dir, args.accum)
        if "tokens_per_s" in res:
            tflops = flops_per_token * res["tokens_per_s"] / 1e12
            fp8 = run in FP8 or any(o.startswith("model.fp8=") for o in variants.get(run, []))
            peak = peak_tflops(device, "fp8" if fp8 else "bf16")
            bf16_peak = peak_tflops(device, "bf16")
            res.update(tflops_per_gpu=tflops, mfu_bf16_peak=tflops / bf16_peak if bf16_peak else None,
                       mfu=tflops / peak if peak else None)
        results[run] = res
        print(run, json.dumps(res)[:400], flush=True)
    # The ratio is to the best HF peer of this invocation (eager or compiled).
    hf = max((results.get(r, {}).get("tokens_per_s") or 0 for r in HF_RUNS), default=0) or None
    print(f"\n{args.shape} on {device}, nproc={args.nproc} {' '.join(args.parallel)} (tokens/s per GPU)")
    print(f"{'run':24s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU(bf16 peak)':>15s} {'vs best HF':>10s} {'peak GB':>8s}")
    for run, res in results.items():
        if "tokens_per_s" not in res:
            print(f"{run:24s} failed: {res['error'][-300:]}")
            continue
        ratio = f"{res['tokens_per_s'] / hf:.2f}x" if hf else "-"
        mfu = f"{res['mfu_bf16_peak']:.1%}" if res.get("mfu_bf16_peak") else "-"
        print(f"{run:24s} {res['tokens_per_s']:10.0f} {res['tflops_per_gpu']:8.1f} {mfu:>15s} {ratio:>10s} "
              f"{res.get('peak_mem_gb', 0):8.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"shape": args.shape, "shape_fields": shape, "flops_per_token": flops_per_token,
                       "device": device, "nproc": args.nproc, "parallel": args.parallel,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
