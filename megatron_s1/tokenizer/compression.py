"""Compression rate of a tokenizer on a corpus — the paper's CR(tau, D).

Intern-S1 technical report (arXiv:2508.15763), dynamic-tokenizer section: the compression rate of tokenizer
``tau`` on data ``D`` is

    CR(tau, D) = sum_{d in D} |d| / sum_{d in D} |tau(d)|

with ``|d|`` the number of (Unicode) characters of document ``d`` and ``|tau(d)|`` its number of tokens, i.e.
average characters per token over the whole corpus (not a mean of per-document ratios). The report gives 2.64 on
SMILES for Intern-S1 vs 1.44-1.51 for Qwen3 / DeepSeek-R1 / GPT-OSS.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def compression_rate(doc_chars: Sequence[int], doc_tokens: Sequence[int]) -> float:
    """CR(tau, D) = sum |d| / sum |tau(d)| (chars per token). Raises on an empty or token-less corpus."""
    if len(doc_chars) != len(doc_tokens):
        raise ValueError(f"{len(doc_chars)} character counts but {len(doc_tokens)} token counts")
    total_tokens = sum(doc_tokens)
    if total_tokens <= 0:
        raise ValueError("the corpus produced no tokens; CR(tau, D) is undefined (is the data file empty?)")
    return sum(doc_chars) / total_tokens


def corpus_compression(encode_batch, docs: Iterable[str], batch_size: int = 1024) -> dict:
    """Encode `docs` with `encode_batch` and return {'chars', 'tokens', 'docs', 'cr'}."""
    chars: list[int] = []
    tokens: list[int] = []
    batch: list[str] = []

    def flush():
        for doc, ids in zip(batch, encode_batch(batch)):
            chars.append(len(doc))
            tokens.append(len(ids))
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return {"chars": sum(chars), "tokens": sum(tokens), "docs": len(chars), "cr": compression_rate(chars, tokens)}
