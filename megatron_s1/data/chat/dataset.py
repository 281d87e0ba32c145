"""Tokenized chat conversations packed into sequences (VLBS or naive) with assistant-only loss masks.

A conversation with ids ``x[0..n]`` and mask ``m[0..n]`` becomes one sample: inputs ``x[:-1]``, labels
``x[1:]``, loss mask ``m[1:]`` (truncated to ``seq_length``). Samples are packed like CPT documents
(`megatron_s1.data.packed`): the schedule (`PackedSchedule`) balances packs over DP ranks, position ids
restart per conversation and attention is block-diagonal (THD ``cu_seqlens`` on GPU). Packing and collation
are the shared `SamplePacks` / `MaskedPackedData` of `megatron_s1.data.packed`.
"""
from __future__ import annotations

import numpy as np


class ChatSamples:
    """Tokenized samples (one sample = one conversation), truncated to seq_length + 1 tokens.

    `items` is any sequence of `Tokenized` (a list, or a lazy view over cached token tables: samples are
    sliced on access, so a mixture that repeats conversations holds no copies).
    """

    def __init__(self, items, seq_length: int):
        self.items, self.seq_length = items, seq_length
        keep, lengths = [], []
        for k in range(len(items)):
            t = items[k]
            n = len(t.ids)
            # Dropped: no trainable token within seq_length, or media that truncation would cut.
            if n >= 2 and np.any(np.asarray(t.mask[1: seq_length + 1])) and not (t.media and n > seq_length + 1):
                keep.append(k)
                lengths.append(min(n, seq_length + 1))
        self.keep = np.asarray(keep, np.int64)
        self.dropped = len(items) - len(keep)
        self.sample_lengths = np.asarray(lengths, np.int64) - 1

    def __len__(self) -> int:
        return len(self.sample_lengths)

    def _item(self, i: int):
        return self.items[int(self.keep[i])]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        t = self._item(i)
        n = int(self.sample_lengths[i]) + 1
        return np.asarray(t.ids[:n], np.int64), np.asarray(t.mask[:n], np.float32)

    def media(self, i: int) -> list:
        return self._item(i).media

    def loss_tokens(self) -> int:
        return int(sum(self[i][1][1:].sum() for i in range(len(self))))
