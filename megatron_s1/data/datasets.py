"""Pretraining datasets on Megatron-Core's BlendedMegatronDatasetBuilder + GPTDataset.

Batches are addressed by a global sample index: step k of a run reads samples
[consumed_samples, consumed_samples + global_batch), data-parallel rank r reads its contiguous slice and
cuts it into micro-batches. Resuming only needs `consumed_samples`, and any DP size reads the same global
batch.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

from megatron_s1.config.schema import ConfigError, DataConfig


class _TokenizerInfo:
    """The two tokenizer facts GPTDataset needs."""

    def __init__(self, vocab_size: int, eod: int):
        self.vocab_size = vocab_size
        self.eod = eod
        # Part of the dataset cache key: a different tokenizer never reuses cached indices.
        self.unique_identifiers = {"vocab_size": vocab_size, "eod": eod}


def parse_blend(blend: list) -> tuple[list[str], Optional[list[float]]]:
    """[[w, prefix], ...] or [prefix, ...] -> (prefixes, weights); checks the files exist."""
    if not blend:
        raise ConfigError("data.blend is empty; run `megatron-s1 preprocess` and set data.blend=[PREFIX] "
                          "(or [[weight, PREFIX], ...])")
    prefixes, weights = [], []
    for entry in blend:
        if isinstance(entry, (list, tuple)):
            if len(entry) != 2:
                raise ConfigError(f"data.blend entry {entry!r} must be [weight, path_prefix]")
            weights.append(float(entry[0]))
            prefixes.append(str(entry[1]))
        else:
            prefixes.append(str(entry))
    if weights and len(weights) != len(prefixes):
        raise ConfigError("data.blend mixes weighted and unweighted entries; give a weight for every prefix")
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not os.path.exists(prefix + suffix):
                raise ConfigError(f"data path {prefix + suffix!r} does not exist; run `megatron-s1 preprocess "
                                  f"--input FILE.jsonl --output-prefix {prefix}` first")
    return prefixes, (weights or None)


def build_gpt_datasets(data: DataConfig, seed: int, vocab_size: int, eod_id: int, num_samples: list[int],
                       cache_dir: str, create_attention_mask: bool):
    """Train/valid/test GPTDatasets sized for `num_samples` [train, valid, test] sequences."""
    if data.mock:
        blend, weights, dataset_class = None, None, MockGPTDataset
    else:
        prefixes, weights = parse_blend(data.blend)
        blend, dataset_class = (prefixes, weights), GPTDataset
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=data.seq_length,
        blend=blend,
        split=data.split,
        path_to_cache=cache_dir,
        tokenizer=_TokenizerInfo(vocab_size, eod_id),
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=create_attention_mask,
        mmap_bin_files=True,
    )
    # Megatron wants None for unused splits of an unweighted blend and an int for weighted ones.
    sizes = [n if (n > 0 or weights) else None for n in num_samples]
    return BlendedMegatronDatasetBuilder(dataset_class, sizes, lambda: True, config).build()


def _collate(samples: list[dict]) -> dict:
    return {key: torch.stack([torch.as_tensor(s[key]) for s in samples]) for key in samples[0]}


def microbatches(dataset, first_sample: int, global_batch: int, dp_rank: int, dp_size: int,
                 micro_batch_size: int) -> Iterator[dict]:
    """Micro-batches of one global batch for one data-parallel rank."""
    per_rank = global_batch // dp_size
    start = first_sample + dp_rank * per_rank
    for offset in range(0, per_rank, micro_batch_size):
        indices = range(start + offset, start + offset + micro_batch_size)
        yield _collate([dataset[i % len(dataset)] for i in indices])
