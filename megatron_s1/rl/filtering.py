"""Data filtering for RL (Intern-S1 RL recipe).

- Offline, before training: estimate each prompt's pass rate over n (= 8) rollouts of the starting policy and
  drop prompts that are always solved (pass rate 1.0) or too hard (pass rate <= 0.25).
- Online, every step: drop groups whose G rewards are all equal (all correct / all wrong: zero advantage, no
  learning signal) and responses that are garbled or stuck repeating themselves.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch

# ---------------------------------------------------------------------------------------------- offline


def keep_by_pass_rate(pass_rate: float, low: float = 0.25, high: float = 1.0) -> bool:
    """Keep a prompt iff low < pass_rate < high (drops 1.0 and <= 0.25 by default)."""
    return low < pass_rate < high


def pass_rates(prompts: Sequence[dict], generate: Callable[[dict, int], list[str]],
               reward: Callable[..., float], n: int = 8, threshold: float = 0.5) -> list[float]:
    """Fraction of ``n`` sampled responses per prompt whose reward exceeds ``threshold``.

    ``generate(prompt_record, n)`` returns n responses; prompt records carry ``prompt`` and ``reference``.
    """
    rates = []
    for rec in prompts:
        outs = generate(rec, n)
        wins = sum(reward(rec["prompt"], o, rec.get("reference")) > threshold for o in outs)
        rates.append(wins / max(len(outs), 1))
    return rates


def offline_filter(prompts: Sequence[dict], rates: Sequence[float], low: float = 0.25,
                   high: float = 1.0) -> list[dict]:
    if len(prompts) != len(rates):
        raise ValueError(f"{len(prompts)} prompts but {len(rates)} pass rates")
    return [dict(p, pass_rate=r) for p, r in zip(prompts, rates) if keep_by_pass_rate(r, low, high)]


# ---------------------------------------------------------------------------------------------- online


def informative_groups(rewards: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """[P] bool: groups (rows of [P, G] rewards) whose rewards are not all equal.

    For binary rewards this is exactly "not all correct and not all wrong".
    """
    r = rewards.float()
    return (r.max(dim=-1).values - r.min(dim=-1).values) > tol


def repeating_tail(tokens: Sequence[int], max_period: int = 64, min_repeats: int = 4,
                   min_span: int = 32) -> bool:
    """True if the sequence ends in a block of period p (1 <= p <= max_period) repeated at least
    ``min_repeats`` times covering at least ``min_span`` tokens: the signature of endless repetition.
    """
    toks = list(tokens)
    n = len(toks)
    for p in range(1, min(max_period, n // min_repeats) + 1):
        span = p
        while span < n and toks[n - 1 - span] == toks[n - 1 - span + p]:
            span += 1
        if span // p >= min_repeats and span >= min_span:
            return True
    return False


def garbled(text: str, max_bad_fraction: float = 0.1) -> bool:
    """Replacement characters / control characters / broken byte sequences above ``max_bad_fraction``."""
    if not text:
        return False
    bad = sum(1 for ch in text if ch == "\ufffd" or (ord(ch) < 32 and ch not in "\n\t\r"))
    return bad / len(text) > max_bad_fraction


def degenerate(text: str, tokens: Optional[Iterable[int]] = None, truncated: bool = False,
               **repeat_kwargs) -> bool:
    """Garbled, or repeating at the tail (checked on tokens when given, else on characters).

    A response cut at the length limit that repeats is the usual "endless repetition" case; ``truncated`` is
    accepted for callers that want to require it (``repeat_kwargs`` tune `repeating_tail`).
    """
    if garbled(text):
        return True
    seq = list(tokens) if tokens is not None else [ord(c) for c in text]
    return repeating_tail(seq, **repeat_kwargs)


def online_filter(rewards: torch.Tensor, degenerate_mask: Optional[torch.Tensor] = None) -> tuple:
    """Apply the online filters to a [P, G] batch.

    Returns (keep_groups [P] bool, keep_samples [P, G] bool): degenerate samples are dropped from the loss; groups
    are dropped when all rewards are equal (evaluated on all G samples, before dropping degenerate ones, so the
    baseline stays that of the full group).
    """
    keep_groups = informative_groups(rewards)
    keep = keep_groups[:, None].expand_as(rewards).clone()
    if degenerate_mask is not None:
        keep &= ~degenerate_mask.to(torch.bool)
    return keep_groups, keep
