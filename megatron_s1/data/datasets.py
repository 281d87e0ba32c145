"""Pretraining datasets on Megatron-Core's BlendedMegatronDatasetBuilder + GPTDataset.

Batches are addressed by a global sample index: step k of a run reads samples
[consumed_samples, consumed_samples + global_batch), data-parallel rank r reads its contiguous slice and
cuts it into micro-batches. Resuming only needs `consumed_samples`, and any DP size reads the same global
batch.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterator, Optional

import numpy as np
import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

from megatron_s1.atomic import atomic_open
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
        if prefix.endswith((".bin", ".idx")):
            raise ConfigError(f"data.blend entry {prefix!r} names a file; give the prefix without the suffix: "
                              f"data.blend=[{prefix[:-4]}]")
        for suffix in (".bin", ".idx"):
            if not os.path.exists(prefix + suffix):
                raise ConfigError(f"data path {prefix + suffix!r} does not exist; run `megatron-s1 preprocess "
                                  f"--input FILE.jsonl --output-prefix {prefix}` first")
    return prefixes, (weights or None)


# Megatron-Core's .idx layout (megatron/core/datasets/indexed_dataset.py): header, version, dtype code, counts, then
# int32 sequence lengths, int64 byte pointers and int64 document indices.
_IDX_HEADER = b"MMIDIDX\x00\x00"
_IDX_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32,
               8: np.uint16}
_FIX = "rerun `megatron-s1 preprocess` for it (the file is damaged or was not written by preprocess)"


def read_index(prefix: str) -> tuple[np.dtype, np.ndarray]:
    """(token dtype, sequence lengths) of PREFIX.idx, checked against the sizes of PREFIX.idx and PREFIX.bin."""
    idx, bin_path = prefix + ".idx", prefix + ".bin"
    with open(idx, "rb") as f:
        head = f.read(len(_IDX_HEADER) + 8 + 1 + 8 + 8)
        if len(head) < 34 or not head.startswith(_IDX_HEADER):
            raise ConfigError(f"{idx} is not a Megatron index file (bad header); {_FIX}")
        version, code, sequences, documents = struct.unpack("<QBQQ", head[len(_IDX_HEADER):])
        if version != 1 or code not in _IDX_DTYPES:
            raise ConfigError(f"{idx} has index version {version} / dtype code {code}, not a version-1 token index; "
                              f"{_FIX}")
        expected = len(head) + sequences * (4 + 8) + documents * 8
        if os.path.getsize(idx) != expected:
            raise ConfigError(f"{idx} is {os.path.getsize(idx)} bytes but its header describes {sequences} "
                              f"sequences ({expected} bytes): truncated or damaged; {_FIX}")
        lengths = np.fromfile(f, dtype=np.int32, count=sequences)
    dtype = np.dtype(_IDX_DTYPES[code])
    tokens = int(lengths.astype(np.int64).sum())
    if os.path.getsize(bin_path) != tokens * dtype.itemsize:
        raise ConfigError(f"{bin_path} is {os.path.getsize(bin_path)} bytes but {idx} describes {tokens} tokens of "
                          f"{dtype.itemsize} bytes: truncated or from another preprocess run; {_FIX}")
    return dtype, lengths


def _max_token(bin_path: str, dtype: np.dtype) -> int:
    data = np.memmap(bin_path, dtype=dtype, mode="r")
    chunk = 1 << 26
    return max((int(data[i:i + chunk].max()) for i in range(0, len(data), chunk)), default=-1)


def check_token_files(prefixes: list[str], vocab_size: int, cache_dir: Optional[str] = None) -> None:
    """Every prefix is an intact, non-empty .bin/.idx pair whose token ids fit the tokenizer.

    Reading the largest id scans the .bin once; the result is cached in CACHE_DIR/token_check.json keyed by the
    file's size and modification time, so a restart does not scan again.
    """
    cache_path = os.path.join(cache_dir, "token_check.json") if cache_dir else None
    cache = {}
    if cache_path and os.path.exists(cache_path):
        try:
            with open(cache_path, encoding="utf-8") as f:
                cache = json.load(f)
        except (OSError, ValueError):
            cache = {}
    changed = False
    for prefix in prefixes:
        dtype, lengths = read_index(prefix)
        if len(lengths) == 0 or int(lengths.max(initial=0)) == 0:
            raise ConfigError(f"{prefix}.bin/.idx holds no documents; preprocess a jsonl with text in it")
        bin_path = os.path.abspath(prefix + ".bin")
        stat = os.stat(bin_path)
        key = [stat.st_size, stat.st_mtime_ns]
        entry = cache.get(bin_path)
        if entry is None or entry[:2] != key:
            entry = key + [_max_token(bin_path, dtype)]
            cache[bin_path], changed = entry, True
        if entry[2] >= vocab_size:
            raise ConfigError(f"{prefix}.bin holds token id {entry[2]} but the tokenizer has {vocab_size} tokens: the "
                              "data was tokenised with another tokenizer; rerun `megatron-s1 preprocess --tokenizer DIR`"
                              " with data.tokenizer's directory")
    if changed and cache_path:
        try:
            with atomic_open(cache_path) as f:
                json.dump(cache, f)
        except OSError:
            pass  # the cache only saves a rescan


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
