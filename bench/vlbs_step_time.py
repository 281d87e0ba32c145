"""Real training step time of naive packing vs VLBS at DP = --nproc on GPUs (SFT-like length mix).

Writes a synthetic IndexedDataset whose document lengths follow an SFT-like long-tailed mix (many short
chats, some medium answers, a tail of long reasoning traces), then trains the same model twice with
`data.packing=naive` and `data.packing=vlbs` and reports the median step time of each.

    python bench/vlbs_step_time.py --nproc 2 --seq-length 16384
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sft_like_lengths(n: int, max_len: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    short = rng.lognormal(np.log(300), 0.6, n)
    medium = rng.lognormal(np.log(1500), 0.5, n)
    long = rng.lognormal(np.log(6000), 0.6, n)
    lengths = np.where(kind == 0, short, np.where(kind == 1, medium, long))
    return np.clip(lengths.astype(np.int64), 16, max_len)


def write_dataset(prefix: str, lengths: np.ndarray, vocab: int, seed: int) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for n in lengths:
        builder.add_document(rng.integers(0, vocab - 1, size=int(n) + 1, dtype=np.int32), [int(n) + 1])
    builder.finalize(prefix + ".idx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="GPUs = data-parallel size")
    parser.add_argument("--seq-length", type=int, default=16384, help="pack length")
    parser.add_argument("--packs-per-rank", type=int, default=1, help="micro-batches (packs) per rank per step")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--model", nargs="*", default=["model.num_layers=8", "model.hidden_size=1024",
                                                       "model.num_attention_heads=8", "model.num_query_groups=8",
                                                       "model.kv_channels=128", "model.ffn_hidden_size=3072",
                                                       "model.num_moe_experts=null", "model.vocab_size=32768"],
                        help="model overrides")
    parser.add_argument("--spec", default="te", help="layer spec (te on GPUs; local for a CPU dry run)")
    parser.add_argument("--dtype", default="bf16", help="params dtype (bf16 on GPUs, fp32 on CPU)")
    parser.add_argument("--out", help="JSON results file")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "sft_mix")
        write_dataset(prefix, sft_like_lengths(args.docs, args.seq_length, 0), 32768, 0)
        gbt = args.seq_length * args.packs_per_rank * args.nproc
        for mode in ("naive", "vlbs"):
            run_dir = os.path.join(tmp, mode)
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc}", "-m",
                   "megatron_s1.cli", "train", "--config", os.path.join(REPO, "examples/cpt/tiny_cpu.yaml"),
                   f"run.dir={run_dir}", f"data.blend=[{prefix}]", "data.split=100,0,0", f"data.packing={mode}",
                   "data.micro_batch_size=1", f"data.seq_length={args.seq_length}",
                   f"model.max_position_embeddings={args.seq_length}", f"model.spec={args.spec}", f"model.params_dtype={args.dtype}",
                   f"train.global_batch_tokens=[[0, {gbt}]]", f"train.steps={args.steps + args.warmup}",
                   "train.eval_interval=0", "train.eval_iters=0", "checkpoint.save_final=false",
                   "checkpoint.resume=false", "logging.tensorboard=false", "logging.progress_bar=off",
                   *args.model]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if proc.returncode != 0:
                results[mode] = {"error": (proc.stdout + proc.stderr)[-2000:]}
                continue
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                records = [json.loads(line) for line in f][args.warmup:]
            step_s = statistics.median(r["global_batch_tokens"] / r["tokens_per_s"] for r in records)
            results[mode] = {"median_step_s": step_s}
    print(json.dumps(results, indent=1))
    if all("median_step_s" in r for r in results.values()):
        print(f"VLBS speed-up at DP={args.nproc}: {results['naive']['median_step_s'] / results['vlbs']['median_step_s']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
