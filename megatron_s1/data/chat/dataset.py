"""Tokenized chat conversations packed into sequences (VLBS or naive) with assistant-only loss masks.

A conversation with ids ``x[0..n]`` and mask ``m[0..n]`` becomes one sample: inputs ``x[:-1]``, labels
``x[1:]``, loss mask ``m[1:]`` (truncated to ``seq_length``). Samples are packed like CPT documents
(`megatron_s1.data.packed`): the schedule (`PackedSchedule`) balances packs over DP ranks, position ids
restart per conversation and attention is block-diagonal (THD ``cu_seqlens`` on GPU).
"""
from __future__ import annotations

import numpy as np

from megatron_s1.data import packing
from megatron_s1.data.packed import PackedData, collate_pack


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


class ChatPacks:
    """Samples packed into sequences, `epochs` passes (each packed with its own seed)."""

    def __init__(self, samples: ChatSamples, seq_length: int, seed: int, vlbs: bool, epochs: int = 1,
                 one_per_pack: bool = False):
        self.samples, self.seq_length = samples, seq_length
        offsets, indices, base = [], [], 0
        for epoch in range(epochs):
            pack = packing.pack_vlbs if vlbs else packing.pack_naive
            if one_per_pack:  # no packing: every conversation alone, padded (shuffled per epoch)
                n = len(samples)
                packs = packing.Packs(np.arange(n + 1, dtype=np.int64),
                                      np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64))
            else:
                packs = pack(samples.sample_lengths, seq_length, seed=seed + epoch)
            offsets.append(packs.pack_offsets[:-1] + base)
            indices.append(packs.sample_indices)
            base += len(packs.sample_indices)
        self.pack_offsets = np.concatenate([*offsets, [base]]).astype(np.int64)
        self.sample_indices = np.concatenate(indices).astype(np.int64)
        self.packs = packing.Packs(self.pack_offsets, self.sample_indices)
        self.sample_lengths = np.concatenate([samples.sample_lengths] * epochs)

    def __len__(self) -> int:
        return len(self.pack_offsets) - 1

    def costs(self, a: float, b: float) -> np.ndarray:
        return packing.pack_costs(self.sample_lengths, self.packs, self.seq_length, a=a, b=b)

    def media(self, p: int) -> list:
        """Media of pack p, in token order."""
        s, e = self.pack_offsets[p], self.pack_offsets[p + 1]
        return [m for i in self.sample_indices[s:e] for m in self.samples.media(int(i) % len(self.samples))]

    def __getitem__(self, p: int) -> list:
        s, e = self.pack_offsets[p], self.pack_offsets[p + 1]
        return [self.samples[int(i) % len(self.samples)] for i in self.sample_indices[s:e]]


def collate_chat_pack(samples: list, seq_length: int, with_mask: bool) -> dict:
    """One pack of (ids, mask) samples -> a micro-batch of one sequence with cu_seqlens."""
    return collate_pack([ids for ids, _ in samples], seq_length, with_mask, [mask for _, mask in samples])


class ChatPackedData(PackedData):
    """PackedData whose packs are chat samples with loss masks (and media, loaded by `media_loader`)."""

    def __init__(self, documents, schedule, seq_length: int, with_mask: bool, media_loader=None,
                 cu_seqlens: bool = True):
        super().__init__(documents, schedule, seq_length, with_mask)
        self.media_loader = media_loader  # [Media] -> dict of batch entries (pixel_values, ts_values, ts_rates)
        self.cu_seqlens = cu_seqlens

    def collate(self, pack: int) -> dict:
        batch = collate_chat_pack(self.documents[pack], self.seq_length, self.with_mask)
        if not self.cu_seqlens:
            del batch["cu_seqlens"]
        if self.media_loader is not None:
            batch.update(self.media_loader(self.documents.media(pack)))
        return batch
