"""Colocated RL rollout speed with and without the KV cache (megatron_s1/rl/rollout.py LocalEngine).

Generates `--rows` responses of `--new-tokens` tokens (no EOS stop: every row runs to the end) from a randomly
initialised model and prints generated tokens/s for the full re-forward and the KV-cached path, plus whether the
two produced the same tokens (fixed seed).

    python bench/rollout_kv_cache.py --preset tiny-moe --rows 32 --new-tokens 64
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny-moe")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rollout-dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from megatron_s1.config import load_config
    from megatron_s1.rl.trainer import RLTrainer

    run_dir = tempfile.mkdtemp()
    cfg = load_config(None, [f"run.dir={run_dir}", f"model.preset={args.preset}", "model.params_dtype=fp32",
                             "model.spec=local", "logging.tensorboard=false", "rl.task=toy_copy",
                             "data.seq_length=16", "checkpoint.save_final=false"])
    rl = RLTrainer(cfg, rollout_dtype=args.rollout_dtype)
    eng = rl.engine
    eng.eos_id = -1  # never stop early: both paths generate rows x new_tokens tokens
    texts = ["Once upon a time", "The answer is", "copy 3=", "In 1900 the city of"]
    prompts = [rl.tok.encode(texts[i % len(texts)]) for i in range(args.rows)]
    result = {"preset": args.preset, "rows": args.rows, "new_tokens": args.new_tokens,
              "rollout_dtype": args.rollout_dtype, "threads": torch.get_num_threads()}
    tokens = {}
    for kv in (False, True):
        eng.kv_cache = kv
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            roll = eng.generate(prompts, 1, args.new_tokens, generator=torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - t0)
        tokens[kv] = roll.response_ids
        result["kv_cache" if kv else "full_reforward"] = {"seconds": round(best, 3),
                                                          "tokens_per_s": round(args.rows * args.new_tokens / best, 1)}
    result["speedup"] = round(result["kv_cache"]["tokens_per_s"] / result["full_reforward"]["tokens_per_s"], 2)
    result["same_tokens"] = tokens[False] == tokens[True]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
