#!/usr/bin/env python3
"""Simulated benefit of VLBS (packing + balancing) over naive packing, and its CPU cost.

For each length distribution and data-parallel size, both schedules process the same samples
(same seed, drop_last=False, so nothing is dropped) and the simulated time is

    sum over steps of max over ranks of sum over the rank's packs of (a * tokens + b * sum len^2)

i.e. the time a synchronous data-parallel job waits for its slowest rank. Naive = next-fit
packing in (shuffled) data order + round-robin assignment; VLBS = windowed best-fit-decreasing
packing + windowed cost-sorted LPT assignment. Results are written up in docs/performance.md.

Example:
    python bench/vlbs.py                      # default table + 10M-lengths timing
    python bench/vlbs.py --b 0.0000409 --skip-timing   # a more conservative attention weight
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megatron_s1.data import packing as pk  # noqa: E402

DISTRIBUTIONS = ("lognormal", "sft-mix")


def sample_lengths(kind: str, n: int, max_len: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic long-tailed sample lengths (tokens), clipped to [16, max_len]."""
    if kind == "lognormal":
        # Median 1k tokens, heavy right tail: ~1% of samples exceed 16k.
        raw = rng.lognormal(np.log(1024), 1.2, n)
    elif kind == "sft-mix":
        # A "real-looking" SFT mix: many short chat turns, a body of medium instructions and
        # code, and a tail of long reasoning traces reaching the context limit.
        parts = rng.choice(3, size=n, p=[0.55, 0.30, 0.15])
        medians = np.array([350.0, 2500.0, 12000.0])
        sigmas = np.array([0.7, 0.6, 0.5])
        raw = rng.lognormal(np.log(medians[parts]), sigmas[parts])
    else:
        raise ValueError(f"unknown distribution {kind!r}; choose from {DISTRIBUTIONS}")
    return np.clip(raw, 16, max_len).astype(np.int64)


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def balance_efficiency(costs: np.ndarray, assignment: np.ndarray) -> float:
    """Mean rank cost / slowest rank cost, averaged over steps (1.0 = perfectly balanced)."""
    per_rank = pk.rank_costs(costs, assignment)
    return float(per_rank.sum() / (per_rank.shape[1] * per_rank.max(axis=1).sum()))


def simulate(args) -> None:
    print(f"# Simulated step time, cost = a*tokens + b*sum(len^2), a={args.a:g}, b={args.b:g} "
          f"(attention = linear at len a/b = {args.a / args.b:.0f} tokens)" if args.b > 0 else
          f"# Simulated step time, cost = a*tokens (b=0)")
    print(f"# max_len={args.max_len}, samples={args.samples}, pack window={args.window}, "
          f"balance window={args.window_steps} steps, seed={args.seed}")
    header = (f"{'distribution':<10} {'DP':>4} {'k':>2} {'steps naive':>11} {'steps vlbs':>10} "
              f"{'fill naive':>10} {'fill vlbs':>9} {'bal naive':>9} {'bal vlbs':>8} "
              f"{'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for kind in args.dist:
        rng = np.random.default_rng(args.seed)
        lengths = sample_lengths(kind, args.samples, args.max_len, rng)
        naive_packs = pk.pack_naive(lengths, args.max_len, seed=args.seed)
        vlbs_packs = pk.pack_vlbs(lengths, args.max_len, seed=args.seed, window=args.window)
        naive_costs = pk.pack_costs(lengths, naive_packs, args.max_len, a=args.a, b=args.b)
        vlbs_costs = pk.pack_costs(lengths, vlbs_packs, args.max_len, a=args.a, b=args.b)
        tokens = int(np.minimum(lengths, args.max_len).sum())
        fill_naive = tokens / (naive_packs.num_packs * args.max_len)
        fill_vlbs = tokens / (vlbs_packs.num_packs * args.max_len)
        for dp in args.dp:
            for k in args.packs_per_rank:
                naive = pk.balance_round_robin(naive_packs.num_packs, dp, k, drop_last=False)
                vlbs = pk.balance_vlbs(vlbs_costs, dp, k, window_steps=args.window_steps,
                                       seed=args.seed, drop_last=False)
                t_naive = pk.simulated_time(naive_costs, naive)
                t_vlbs = pk.simulated_time(vlbs_costs, vlbs)
                print(f"{kind:<10} {dp:>4} {k:>2} {naive.shape[0]:>11} {vlbs.shape[0]:>10} "
                      f"{fill_naive:>10.3f} {fill_vlbs:>9.3f} "
                      f"{balance_efficiency(naive_costs, naive):>9.3f} "
                      f"{balance_efficiency(vlbs_costs, vlbs):>8.3f} "
                      f"{t_naive / t_vlbs:>7.2f}x")
    print("# fill = tokens / (packs * max_len); bal = mean rank cost / slowest rank cost")


def timing(args) -> None:
    n = args.timing_samples
    lengths = sample_lengths("sft-mix", n, args.max_len, np.random.default_rng(args.seed))
    print(f"\n# CPU time on {n:,} lengths (single thread, best of {args.repeats}), "
          f"DP={args.timing_dp}, k={args.timing_k}")

    def best(fn):
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    t_pack, packs = best(lambda: pk.pack_vlbs(lengths, args.max_len, seed=args.seed,
                                              window=args.window))
    t_cost, costs = best(lambda: pk.pack_costs(lengths, packs, args.max_len, a=args.a, b=args.b))
    t_bal, _ = best(lambda: pk.balance_vlbs(costs, args.timing_dp, args.timing_k,
                                            window_steps=args.window_steps, seed=args.seed))
    t_npack, npacks = best(lambda: pk.pack_naive(lengths, args.max_len, seed=args.seed))
    t_nbal, _ = best(lambda: pk.balance_round_robin(npacks.num_packs, args.timing_dp,
                                                    args.timing_k))
    print(f"{'stage':<28} {'seconds':>8}")
    print(f"{'vlbs pack (BFD windows)':<28} {t_pack:>8.3f}")
    print(f"{'pack costs':<28} {t_cost:>8.3f}")
    print(f"{'vlbs balance (LPT windows)':<28} {t_bal:>8.3f}")
    print(f"{'vlbs total':<28} {t_pack + t_cost + t_bal:>8.3f}   ({packs.num_packs:,} packs)")
    print(f"{'naive pack + round-robin':<28} {t_npack + t_nbal:>8.3f}   ({npacks.num_packs:,} packs)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--samples", type=int, default=1_000_000, help="samples per distribution")
    p.add_argument("--max-len", type=int, default=32768, help="pack capacity (tokens)")
    p.add_argument("--dp", type=parse_int_list, default=[8, 64, 512],
                   help="comma-separated data-parallel sizes")
    p.add_argument("--packs-per-rank", type=parse_int_list, default=[1, 4],
                   help="comma-separated packs (micro-batches) per rank per step")
    p.add_argument("--dist", type=lambda s: s.split(","), default=list(DISTRIBUTIONS),
                   help=f"comma-separated length distributions from {DISTRIBUTIONS}")
    p.add_argument("--a", type=float, default=pk.DEFAULT_A, help="cost per token (linear part)")
    p.add_argument("--b", type=float, default=pk.DEFAULT_B,
                   help="cost per squared sample length (attention); a/b is the length at "
                        "which a sample's attention work equals its linear work")
    p.add_argument("--window", type=int, default=pk.DEFAULT_PACK_WINDOW,
                   help="samples per best-fit packing window")
    p.add_argument("--window-steps", type=int, default=pk.DEFAULT_WINDOW_STEPS,
                   help="steps per balancing window")
    p.add_argument("--seed", type=int, default=1234, help="seed of lengths, packing, balancing")
    p.add_argument("--timing-samples", type=int, default=10_000_000,
                   help="lengths for the CPU timing")
    p.add_argument("--timing-dp", type=int, default=64, help="DP size for the CPU timing")
    p.add_argument("--timing-k", type=int, default=1, help="packs per rank for the CPU timing")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (best is reported)")
    p.add_argument("--skip-timing", action="store_true", help="only print the simulation table")
    p.add_argument("--skip-sim", action="store_true", help="only print the CPU timing")
    args = p.parse_args(argv)
    for kind in args.dist:
        if kind not in DISTRIBUTIONS:
            p.error(f"--dist: unknown distribution {kind!r}; choose from {DISTRIBUTIONS}")
    if args.a < 0 or args.b < 0 or args.a + args.b == 0:
        p.error("--a and --b must be >= 0 and not both 0")
    if not args.skip_sim:
        simulate(args)
    if not args.skip_timing:
        timing(args)


if __name__ == "__main__":
    main()
