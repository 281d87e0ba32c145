"""Packed training data: whole documents packed into sequences and balanced over DP ranks (VLBS).

Each document becomes one sample (inputs `doc[:-1]`, labels `doc[1:]`, truncated to `seq_length`).
Samples are packed into sequences of at most `seq_length` tokens and the packs of every step are
assigned to (DP rank, micro-batch) so that each step's slowest rank is as fast as possible
(`megatron_s1.data.packing`). A micro-batch is one pack: on GPU with TE it runs as a THD packed
sequence (`cu_seqlens`); on CPU through a block-diagonal causal mask. Position ids restart at every
document, so a packed document sees exactly what it would see alone.

The schedule is a pure function of the config (seed, steps, batch schedule, data): resuming at step
k reads exactly the packs an uninterrupted run reads at step k.
"""
from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.datasets import parse_blend
from megatron_s1.data import packing


def split_documents(num_docs: int, split: str, seed: int) -> list[np.ndarray]:
    """Shuffle document indices once and cut them by the train/valid/test proportions."""
    weights = np.array([float(x) for x in split.replace("/", ",").split(",")], dtype=np.float64)
    if len(weights) != 3 or weights.sum() <= 0:
        raise ConfigError(f"data.split={split!r} must be three proportions like 98,1,1")
    order = np.random.default_rng(seed).permutation(num_docs)
    bounds = np.round(np.cumsum(weights / weights.sum()) * num_docs).astype(np.int64)
    return [order[start:end] for start, end in zip([0, *bounds[:2]], bounds)]


class PackedDocuments:
    """Documents of the blend, packed; item p is the (unpadded) list of token arrays of pack p."""

    def __init__(self, prefixes: list[str], doc_ids: np.ndarray, seq_length: int, seed: int, vlbs: bool,
                 epochs: int):
        self.datasets = [IndexedDataset(p) for p in prefixes]
        offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.offsets = offsets
        self.seq_length = seq_length
        all_lengths = np.concatenate([d.sequence_lengths.astype(np.int64) for d in self.datasets])
        doc_ids = doc_ids[all_lengths[doc_ids] >= 2]  # a document needs an input and a label
        self.doc_ids = doc_ids
        sample_lengths = np.minimum(all_lengths[doc_ids] - 1, seq_length)
        pack_offsets, sample_indices, self.sample_lengths = [], [], sample_lengths
        base = 0
        for epoch in range(epochs):
            pack = packing.pack_vlbs if vlbs else packing.pack_naive
            packs = pack(sample_lengths, seq_length, seed=seed + epoch)
            pack_offsets.append(packs.pack_offsets[:-1] + base)
            sample_indices.append(packs.sample_indices)
            base += len(packs.sample_indices)
        self.pack_offsets = np.concatenate([*pack_offsets, [base]]).astype(np.int64)
        self.sample_indices = np.concatenate(sample_indices).astype(np.int64)
        self.packs = packing.Packs(self.pack_offsets, self.sample_indices)

    def __len__(self) -> int:
        return len(self.pack_offsets) - 1

    def _document(self, doc: int) -> np.ndarray:
        ds = int(np.searchsorted(self.offsets, doc, side="right") - 1)
        return self.datasets[ds][doc - int(self.offsets[ds])]

    def costs(self, a: float, b: float) -> np.ndarray:
        return packing.pack_costs(self.sample_lengths, self.packs, self.seq_length, a=a, b=b)

    def __getitem__(self, pack: int) -> list[np.ndarray]:
        start, end = self.pack_offsets[pack], self.pack_offsets[pack + 1]
        docs = []
        for sample in self.sample_indices[start:end]:
            doc = self._document(int(self.doc_ids[sample]))
            docs.append(np.asarray(doc[: self.seq_length + 1], dtype=np.int64))
        return docs


def collate_pack(docs: list, seq_length: int, with_mask: bool, loss_masks: list | None = None) -> dict:
    """One pack -> a micro-batch of one padded sequence with cu_seqlens (and a block-diagonal mask).

    `loss_masks[i]` (one value per token of `docs[i]`) limits the loss to some tokens, e.g. assistant turns
    in SFT; without it every real token counts.
    """
    tokens = np.zeros(seq_length, dtype=np.int64)
    labels = np.zeros(seq_length, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    position_ids = np.zeros(seq_length, dtype=np.int64)
    cu = [0]
    for i, doc in enumerate(docs):
        n = len(doc) - 1
        s = cu[-1]
        tokens[s:s + n] = doc[:-1]
        labels[s:s + n] = doc[1:]
        loss_mask[s:s + n] = 1.0 if loss_masks is None else loss_masks[i][1:]
        position_ids[s:s + n] = np.arange(n)
        cu.append(s + n)
    if cu[-1] < seq_length:
        # Padding forms its own segment so THD kernels see the whole buffer; its loss is masked.
        position_ids[cu[-1]:] = np.arange(seq_length - cu[-1])
        cu.append(seq_length)
    batch = {
        "tokens": torch.from_numpy(tokens)[None],
        "labels": torch.from_numpy(labels)[None],
        "loss_mask": torch.from_numpy(loss_mask)[None],
        "position_ids": torch.from_numpy(position_ids)[None],
        "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
    }
    if with_mask:
        segment = np.repeat(np.arange(len(cu) - 1), np.diff(cu))
        same = segment[:, None] == segment[None, :]
        causal = np.tril(np.ones((seq_length, seq_length), dtype=bool))
        batch["attention_mask"] = torch.from_numpy(~(same & causal))[None, None]  # True = masked
    return batch


class PackedSchedule:
    """Which packs every (step, DP rank, micro-batch) trains on.

    Steps are grouped into balancing windows of `window_steps` consecutive steps with the same number of
    packs per rank; each window takes the next packs of the stream and balances them (VLBS) or assigns
    them round-robin (naive). A batch-size switch therefore starts a new window at the switch.
    """

    def __init__(self, documents: PackedDocuments, packs_per_rank_by_step: list[int], dp: int, seed: int,
                 vlbs: bool, window_steps: int, a: float, b: float):
        costs = documents.costs(a, b)
        table: list[np.ndarray] = []
        cursor, step = 0, 0
        steps = len(packs_per_rank_by_step)
        while step < steps:
            k = packs_per_rank_by_step[step]
            end = step
            while end < steps and end - step < window_steps and packs_per_rank_by_step[end] == k:
                end += 1
            n = (end - step) * dp * k
            if cursor + n > len(documents):
                raise ConfigError(f"packed data has {len(documents)} packs but the run needs more; raise "
                                  "data.packing_epochs or lower train.steps")
            if vlbs:
                local = packing.balance_vlbs(costs[cursor:cursor + n], dp, k, window_steps=end - step,
                                             seed=seed + step)
            else:
                local = packing.balance_round_robin(n, dp, k)
            table.extend(local + cursor)
            cursor, step = cursor + n, end
        self.table = table  # per step: array [dp, k] of global pack ids
        self.packs_used = cursor

    def packs(self, step: int, dp_rank: int) -> np.ndarray:
        return self.table[step][dp_rank]


class PackedData:
    """Packed documents with their step schedule (train) or in sequential order (eval)."""

    def __init__(self, documents: PackedDocuments, schedule: PackedSchedule | None, seq_length: int,
                 with_mask: bool):
        self.documents = documents
        self.schedule = schedule
        self.seq_length = seq_length
        self.with_mask = with_mask
        if schedule is not None:
            starts = np.cumsum([0] + [t.size for t in schedule.table])
            self._step_of_first_pack = {int(s): i for i, s in enumerate(starts[:-1])}

    def pack_ids(self, first_pack: int, global_batch: int, dp_rank: int, dp_size: int) -> list[int]:
        """The packs one DP rank trains on in the step that starts at `first_pack`."""
        if self.schedule is None:
            per_rank = global_batch // dp_size
            start = first_pack + dp_rank * per_rank
            return [(start + i) % len(self.documents) for i in range(per_rank)]
        step = self._step_of_first_pack.get(first_pack)
        if step is None:
            raise RuntimeError(f"no packed step starts at pack {first_pack}; the checkpoint's data position "
                               "does not belong to this packing schedule")
        return [int(p) for p in self.schedule.packs(step, dp_rank) if p >= 0]

    def collate(self, pack: int) -> dict:
        return collate_pack(self.documents[pack], self.seq_length, self.with_mask)

    def microbatches(self, first_pack: int, global_batch: int, dp_rank: int, dp_size: int):
        for pack in self.pack_ids(first_pack, global_batch, dp_rank, dp_size):
            yield self.collate(pack)


def prefixes_for_packing(blend: list) -> list[str]:
    prefixes, weights = parse_blend(blend)
    if weights is not None:
        raise ConfigError("data.packing does not support weighted blends yet; list the prefixes without weights")
    return prefixes
