"""Packed training data: whole samples packed into sequences and balanced over DP ranks (VLBS).

A sample is a CPT document (`Documents`), an SFT conversation or a multimodal CPT sample, each with inputs
`ids[:-1]` and labels `ids[1:]` (truncated to `seq_length`; the last two also carry loss masks and media).
Samples are packed into sequences of at most `seq_length` tokens and the packs of every step are
assigned to (DP rank, micro-batch) so that each step's slowest rank is as fast as possible
(`megatron_s1.data.packing`). A micro-batch is one pack: on GPU with TE it runs as a THD packed
sequence (`cu_seqlens`); on CPU through a block-diagonal causal mask. Position ids restart at every
sample, so a packed sample sees exactly what it would see alone.

The schedule is a pure function of the config (seed, steps, batch schedule, data): resuming at step
k reads exactly the packs an uninterrupted run reads at step k.
"""
from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_s1.config.schema import ConfigError, split_proportions
from megatron_s1.data.datasets import parse_blend
from megatron_s1.data import packing


def split_documents(num_docs: int, split: str, seed: int) -> list[np.ndarray]:
    """Shuffle document indices once and cut them by the train/valid/test proportions."""
    weights = np.array(split_proportions(split), dtype=np.float64)
    order = np.random.default_rng(seed).permutation(num_docs)
    bounds = np.round(np.cumsum(weights / weights.sum()) * num_docs).astype(np.int64)
    return [order[start:end] for start, end in zip([0, *bounds[:2]], bounds)]


class Documents:
    """Documents of the blend as packing samples: sample i is document `doc_ids[i]`, at most seq_length + 1
    tokens (inputs `doc[:-1]`, labels `doc[1:]`); documents shorter than 2 tokens are left out."""

    def __init__(self, prefixes: list[str], doc_ids: np.ndarray, seq_length: int):
        self.datasets = [IndexedDataset(p) for p in prefixes]
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])
        self.seq_length = seq_length
        all_lengths = np.concatenate([d.sequence_lengths.astype(np.int64) for d in self.datasets])
        self.doc_ids = doc_ids[all_lengths[doc_ids] >= 2]  # a document needs an input and a label
        self.sample_lengths = np.minimum(all_lengths[self.doc_ids] - 1, seq_length)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def __getitem__(self, i: int) -> np.ndarray:
        doc = int(self.doc_ids[i])
        ds = int(np.searchsorted(self.offsets, doc, side="right") - 1)
        return np.asarray(self.datasets[ds][doc - int(self.offsets[ds])][: self.seq_length + 1], dtype=np.int64)


class SamplePacks:
    """Samples packed into sequences of at most `seq_length` tokens, `epochs` passes (each its own seed).

    `samples` has `sample_lengths` (input tokens of each sample, <= seq_length), `samples[i]` (what the
    collate function takes) and, with media, `samples.media(i)` (a list, in token order). Item p is the
    list of pack p's samples. With `one_per_pack` every sample is a pack alone (shuffled per epoch).
    Used by CPT documents, SFT conversations and multimodal CPT samples.
    """

    def __init__(self, samples, seq_length: int, seed: int, vlbs: bool, epochs: int = 1,
                 one_per_pack: bool = False):
        self.samples, self.seq_length = samples, seq_length
        self.sample_lengths = np.asarray(samples.sample_lengths, dtype=np.int64)
        offsets, indices, base = [], [], 0
        for epoch in range(epochs):
            if one_per_pack:
                n = len(self.sample_lengths)
                packs = packing.Packs(np.arange(n + 1, dtype=np.int64),
                                      np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64))
            else:
                pack = packing.pack_vlbs if vlbs else packing.pack_naive
                packs = pack(self.sample_lengths, seq_length, seed=seed + epoch)
            offsets.append(packs.pack_offsets[:-1] + base)
            indices.append(packs.sample_indices)
            base += len(packs.sample_indices)
        self.pack_offsets = np.concatenate([*offsets, [base]]).astype(np.int64)
        self.sample_indices = np.concatenate(indices).astype(np.int64)
        self.packs = packing.Packs(self.pack_offsets, self.sample_indices)

    def __len__(self) -> int:
        return len(self.pack_offsets) - 1

    def costs(self, a: float, b: float) -> np.ndarray:
        return packing.pack_costs(self.sample_lengths, self.packs, self.seq_length, a=a, b=b)

    def members(self, p: int) -> np.ndarray:
        """Sample indices of pack p, in token order."""
        return self.packs.pack(p)

    def __getitem__(self, p: int) -> list:
        return [self.samples[int(i)] for i in self.members(p)]

    def media(self, p: int) -> list:
        """Media of pack p, in token order."""
        return [m for i in self.members(p) for m in self.samples.media(int(i))]


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

    def __init__(self, documents: SamplePacks, packs_per_rank_by_step: list[int], dp: int, seed: int,
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

    def __init__(self, documents: SamplePacks, schedule: PackedSchedule | None, seq_length: int,
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


def collate_masked_pack(samples: list, seq_length: int, with_mask: bool) -> dict:
    """One pack of (ids, loss mask) samples -> a micro-batch of one sequence with cu_seqlens."""
    return collate_pack([ids for ids, _ in samples], seq_length, with_mask, [mask for _, mask in samples])


class MaskedPackedData(PackedData):
    """PackedData whose samples are (ids, loss mask) pairs (SFT conversations, multimodal CPT samples), with
    the media of a pack loaded by `media_loader` ([media items] -> pixel_values, ts_values, ts_rates)."""

    def __init__(self, documents, schedule, seq_length: int, with_mask: bool, media_loader=None,
                 cu_seqlens: bool = True):
        super().__init__(documents, schedule, seq_length, with_mask)
        self.media_loader = media_loader
        self.cu_seqlens = cu_seqlens

    def collate(self, pack: int) -> dict:
        batch = collate_masked_pack(self.documents[pack], self.seq_length, self.with_mask)
        if not self.cu_seqlens:
            del batch["cu_seqlens"]
        if self.media_loader is not None:
            batch.update(self.media_loader(self.documents.media(pack)))
        return batch


def check_packing(data) -> str:
    """data.packing of a CPT-style task (none / naive / vlbs), checked against the micro-batch size."""
    if data.packing not in ("none", "naive", "vlbs"):
        raise ConfigError(f"data.packing must be none, naive or vlbs, got {data.packing!r}")
    if data.packing != "none" and data.micro_batch_size != 1:
        raise ConfigError(f"data.packing={data.packing} needs data.micro_batch_size=1 (a micro-batch is one packed "
                          f"sequence), got {data.micro_batch_size}")
    return data.packing


def train_schedule(packs: SamplePacks, cfg, trainer, vlbs: bool) -> PackedSchedule:
    """The training schedule of `packs` for this run's steps, batch-size schedule and DP size."""
    d = cfg.data
    per_step = trainer.batch_schedule.microbatches_per_step(cfg.train.steps)  # packs per rank
    return PackedSchedule(packs, per_step, trainer.dp_size, cfg.run.seed, vlbs, d.vlbs_window_steps,
                          d.vlbs_cost_a, d.vlbs_cost_b)


def prefixes_for_packing(blend: list) -> list[str]:
    prefixes, weights = parse_blend(blend)
    if weights is not None:
        raise ConfigError("data.packing does not support weighted blends yet; list the prefixes without weights")
    return prefixes
