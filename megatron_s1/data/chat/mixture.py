"""SFT data mixtures: datasets with ratios, per-dataset epochs and a data family, sampled reproducibly.

Recipe::

    sft:
      datasets:
        - {path: sci.jsonl, family: scientific, epochs: 2}
        - {path: chat.jsonl, family: general, ratio: 0.3}

Each dataset's conversations are first split into train / held-out by ``data.split`` (held-out
conversations are never mixed or repeated). The mixture draws ``count_i`` train conversations from dataset
i: ``epochs_i * len_i`` by default; when ratios are given, ``ratio_i / sum(ratio) * total`` where total is
``sft.mixture_samples`` or the epochs-based size. Draws walk whole shuffled passes (no conversation
repeats before all have been used), and the mixture is shuffled. Everything is a pure function of
``run.seed`` and the recipe; ``describe()`` is what the task logs (counts, realised shares and a hash of
the drawn sample list).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from megatron_s1.config.schema import ConfigError, split_proportions


@dataclass
class DatasetSpec:
    path: str
    ratio: Optional[float] = None
    epochs: float = 1.0
    family: Optional[str] = None
    name: Optional[str] = None


def parse_specs(datasets: list, ratios: Optional[list] = None, default_family: Optional[str] = None) -> list:
    specs = []
    for i, entry in enumerate(datasets):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(f"sft.datasets[{i}] must be a path or a mapping with a path, got {entry!r}")
        unknown = set(entry) - {"path", "ratio", "epochs", "family", "name"}
        if unknown:
            raise ConfigError(f"sft.datasets[{i}] has unknown keys {sorted(unknown)}; use path, ratio, epochs, "
                              "family, name")
        spec = DatasetSpec(str(entry["path"]), entry.get("ratio"), float(entry.get("epochs", 1.0)),
                           entry.get("family", default_family), entry.get("name"))
        spec.name = spec.name or os.path.splitext(os.path.basename(spec.path))[0]
        specs.append(spec)
    if not specs:
        raise ConfigError("train.task=sft needs sft.datasets (a list of chat jsonl files)")
    if ratios is not None:
        if len(ratios) != len(specs):
            raise ConfigError(f"sft.ratios has {len(ratios)} values for {len(specs)} sft.datasets")
        for spec, r in zip(specs, ratios):
            spec.ratio = float(r)
    given = [s.ratio is not None for s in specs]
    if any(given) and not all(given):
        raise ConfigError("give a ratio to every sft.datasets entry or to none")
    for s in specs:
        if s.epochs <= 0 or (s.ratio is not None and s.ratio < 0):
            raise ConfigError(f"sft dataset {s.name!r}: epochs must be > 0 and ratio >= 0")
    return specs


def read_conversations(path: str) -> list:
    """A chat jsonl: one conversation per line, ``{"messages": [...]}`` (or a bare list of messages)."""
    from megatron_s1.data.jsonl_input import json_lines

    out = []
    for n, rec in json_lines(path, what="sft dataset"):
        if isinstance(rec, list):
            rec = {"messages": rec}
        if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
            raise ConfigError(f"{path}:{n}: a conversation needs a 'messages' list")
        out.append(rec)
    return out


def split_indices(n: int, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.array(split_proportions(split), dtype=np.float64)
    order = np.random.default_rng(seed).permutation(n)
    b = np.round(np.cumsum(weights / weights.sum()) * n).astype(np.int64)
    return order[: b[0]], order[b[0]: b[1]]


def draw(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` items of `pool` walking whole shuffled passes."""
    if count <= 0 or len(pool) == 0:
        return np.zeros(0, dtype=np.int64)
    passes = [rng.permutation(pool) for _ in range(-(-count // len(pool)))]
    return np.concatenate(passes)[:count].astype(np.int64)


def mixture_counts(specs: list, train_sizes: list, mixture_samples: Optional[int]) -> list:
    by_epochs = [int(round(s.epochs * n)) for s, n in zip(specs, train_sizes)]
    if specs[0].ratio is None:
        if mixture_samples is not None:
            total = sum(by_epochs) or 1
            return [int(round(c * mixture_samples / total)) for c in by_epochs]
        return by_epochs
    total = mixture_samples if mixture_samples is not None else sum(by_epochs)
    rsum = sum(s.ratio for s in specs)
    if rsum <= 0:
        raise ConfigError("sft dataset ratios sum to 0")
    exact = np.array([s.ratio / rsum * total for s in specs])
    counts = np.floor(exact).astype(np.int64)
    # Largest remainders get the leftover samples, so counts sum exactly to total.
    for i in np.argsort(-(exact - counts), kind="stable")[: total - int(counts.sum())]:
        counts[i] += 1
    for s, c, n in zip(specs, counts, train_sizes):
        if c > 0 and n == 0:
            raise ConfigError(f"sft dataset {s.name!r} has no train conversations but ratio {s.ratio}")
    return [int(c) for c in counts]


class Mixture:
    """The sampled train mixture and the held-out set: lists of (dataset index, conversation index)."""

    def __init__(self, specs: list, sizes: list, split: str, seed: int, mixture_samples: Optional[int] = None):
        self.specs = specs
        self.train_pools, self.valid_pools = [], []
        for d, n in enumerate(sizes):
            tr, va = split_indices(n, split, seed + 7919 * d)
            self.train_pools.append(np.sort(tr))
            self.valid_pools.append(np.sort(va))
        self.counts = mixture_counts(specs, [len(p) for p in self.train_pools], mixture_samples)
        rng = np.random.default_rng([seed, 1])
        drawn = [np.stack([np.full(c, d), draw(self.train_pools[d], c, rng)], 1)
                 for d, c in enumerate(self.counts)]
        train = np.concatenate(drawn) if drawn else np.zeros((0, 2), np.int64)
        self.train = train[rng.permutation(len(train))].astype(np.int64)
        self.valid = np.concatenate([np.stack([np.full(len(p), d), p], 1) for d, p in enumerate(self.valid_pools)]
                                    ).astype(np.int64)

    def describe(self) -> dict:
        total = max(1, len(self.train))
        digest = hashlib.sha256(self.train.tobytes()).hexdigest()[:16]
        return {
            "datasets": [{"name": s.name, "path": s.path, "family": s.family, "ratio": s.ratio, "epochs": s.epochs,
                          "train_conversations": int(len(tp)), "valid_conversations": int(len(vp)),
                          "drawn": int(c), "share": round(c / total, 6),
                          "passes": round(c / len(tp), 4) if len(tp) else 0.0}
                         for s, tp, vp, c in zip(self.specs, self.train_pools, self.valid_pools, self.counts)],
            "train_samples": int(len(self.train)), "valid_samples": int(len(self.valid)), "sha256": digest,
        }
