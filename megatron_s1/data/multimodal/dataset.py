"""jsonl samples with interleaved text, images and time series.

One line = one sample:
    {"content": [{"text": "..."}, {"image": "imgs/a.png"}, {"timeseries": "sig/x.npy", "sampling_rate": 250},
                 {"text": "..."}]}
Relative paths resolve against `mm.image_root` or the jsonl's folder. Series are .npy or .csv arrays of
shape [L] or [L, C] (time first; a .csv may have one header line), z-normalised per channel.

Each sample becomes one row of `seq_length` tokens (next-token inputs/labels, padded with EOD), or, with
data.packing, one sample of `MultimodalSamples` that packs with others into a row (`data.packed`).
Images expand to `<img>` + tiles * tokens_per_tile x `<IMG_CONTEXT>` + `</img>` (vision.arch=internvit) or
`<|vision_start|>` + patches/4 x `<|image_pad|>` + `<|vision_end|>` (vision.arch=pro, which also takes
`{"video": [frames] | "clip.npy", "fps": 24}` items; `data/multimodal/vision.py`), series to
`<|ts|>` + N x `<TS_CONTEXT>` + `<|/ts|>`. Loss is on text tokens only (labels that are text or EOD; a Pro
video's frame timestamps are text).
A sample longer than the row is cut at the first media item that does not fit whole (text is cut
mid-way), so placeholders and encoder outputs always agree.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

import numpy as np
import torch

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.jsonl_input import json_lines
from megatron_s1.data.multimodal.vision import VISION_KEYS, collate_vision, vision_media
from megatron_s1.models.timeseries.encoder import num_timeseries_tokens, znormalize


def load_series(path: str) -> torch.Tensor:
    if path.endswith(".npy"):
        arr = np.load(path)
    elif path.endswith(".csv"):
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        try:
            [float(v) for v in first.strip().split(",")]
            skip = 0
        except ValueError:
            skip = 1
        arr = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise ValueError(f"time series {path!r}: expected a .npy or .csv file")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"time series {path!r}: expected shape [L] or [L, C] with L >= 1, got {arr.shape}")
    return znormalize(torch.from_numpy(arr))


def load_media(items: list, visual=None) -> dict:
    """Encoder inputs of media items in token order: ("image", path) / ("video", item) -> the vision
    keyword arguments of `visual` (`vision_media`: pixel_values, and for vision.arch=pro image_grid_thw,
    pixel_values_videos, video_grid_thw), ("timeseries", path, sampling_rate) -> ts_values / ts_rates lists.

    merge_embeddings fills each kind's placeholders in row-major order, so images must come in the order of
    their tokens, and series likewise (for a packed row: sample by sample); kinds may interleave freely."""
    vision_items = [item for item in items if item[0] in ("image", "video")]
    out = visual.load(vision_items) if visual is not None and vision_items else {"pixel_values": None}
    series = [item for item in items if item[0] == "timeseries"]
    out["ts_values"] = [load_series(path) for _, path, _ in series]
    out["ts_rates"] = [float(rate) for _, _, rate in series]
    return out


class MultimodalJsonlDataset:
    def __init__(self, paths: list[str], tokenizer, media, seq_length: int, vision=None, timeseries=None,
                 root: Optional[str] = None, indices: Optional[list[int]] = None):
        self.tok, self.media, self.seq_length = tokenizer, media, seq_length
        self.vision, self.timeseries, self.root = vision, timeseries, root
        self.records: list[tuple[dict, str]] = []
        for path in paths:
            base = root or os.path.dirname(os.path.abspath(path))
            for n, rec in json_lines(path, what="multimodal data file"):
                if not isinstance(rec, dict) or not isinstance(rec.get("content"), list):
                    raise ConfigError(f"{path}:{n}: a sample needs a 'content' list, e.g. "
                                      '{"content": [{"text": "..."}, {"image": "a.png"}]}')
                self.records.append((rec, base))
        self.indices = list(range(len(self.records))) if indices is None else indices
        self.media_ids = set(media.all())
        self.visual = vision_media(vision, media, tokenizer.encode)
        self._layout = lru_cache(maxsize=65536)(self._build_layout)

    def subset(self, indices: list[int]) -> "MultimodalJsonlDataset":
        other = object.__new__(MultimodalJsonlDataset)
        other.__dict__.update(self.__dict__)
        other.indices = [self.indices[i] for i in indices]
        return other

    def __len__(self) -> int:
        return len(self.indices)

    def _path(self, base: str, p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(base, p)

    def _video(self, base: str, item: dict) -> dict:
        frames = item["video"]
        frames = self._path(base, frames) if isinstance(frames, str) else [self._path(base, f) for f in frames]
        return dict(item, video=frames)

    def _build_layout(self, rec_index: int):
        """(ids, vision items [(kind, path or video item)], series [(path, sr)]) fitting seq_length + 1 tokens."""
        rec, base = self.records[rec_index]
        limit = self.seq_length + 1
        ids: list[int] = []
        visuals, series = [], []
        for item in rec["content"]:
            room = limit - len(ids)
            if room <= 0:
                break
            if "text" in item:
                ids.extend(self.tok.encode(item["text"])[:room])
            elif "image" in item or "video" in item:
                kind = "image" if "image" in item else "video"
                if self.visual is None:
                    raise ValueError(f"a sample has an {kind} but vision.preset is not set")
                ref = self._path(base, item["image"]) if kind == "image" else self._video(base, item)
                seg = self.visual.prompt_ids(kind, ref)
                if len(seg) > room:
                    break
                ids.extend(seg)
                visuals.append((kind, ref))
            elif "timeseries" in item:
                if self.timeseries is None:
                    raise ValueError("a sample has a time series but timeseries.preset is not set")
                path = self._path(base, item["timeseries"])
                sr = float(item.get("sampling_rate", self.timeseries.default_sampling_rate))
                length = int(item["length"]) if "length" in item else load_series(path).shape[0]
                n = num_timeseries_tokens(length, sr)
                seg = [self.media.ts_start] + [self.media.ts_context] * n + [self.media.ts_end]
                if len(seg) > room:
                    break
                ids.extend(seg)
                series.append((path, sr))
            else:
                raise ValueError(f"content item {item!r} needs a text, image, video or timeseries key")
        if len(ids) < limit:
            ids.append(self.tok.eod_id)
        return ids, visuals, series

    def loss_flags(self, ids: list[int]) -> np.ndarray:
        """1.0 for text / EOD tokens, 0.0 for media tokens: the loss mask of the labels at these ids."""
        return np.fromiter((t not in self.media_ids for t in ids), dtype=np.float32, count=len(ids))

    def ids(self, index: int) -> list[int]:
        """Token ids of a sample (media expanded, at most seq_length + 1, EOD-terminated when it fits)."""
        return self._layout(self.indices[index % len(self)])[0]

    def loss_tokens(self, index: int) -> int:
        """Number of loss (text) tokens of a sample: what square averaging weighs by."""
        return int(self.loss_flags(self.ids(index)[1:]).sum())

    def media_items(self, index: int) -> list:
        """The sample's media items for `load_media`, images / videos first then series (in token order)."""
        _, visuals, series = self._layout(self.indices[index % len(self)])
        return list(visuals) + [("timeseries", path, sr) for path, sr in series]

    def __getitem__(self, index: int) -> dict:
        ids = self.ids(index)
        s = self.seq_length
        arr = np.full(s + 1, self.tok.eod_id, dtype=np.int64)
        arr[: len(ids)] = ids
        loss_mask = np.zeros(s, dtype=np.float32)
        loss_mask[: len(ids) - 1] = self.loss_flags(ids[1:])
        return {
            "tokens": torch.from_numpy(arr[:-1].copy()), "labels": torch.from_numpy(arr[1:].copy()),
            "loss_mask": torch.from_numpy(loss_mask), "position_ids": torch.arange(s, dtype=torch.long),
            **load_media(self.media_items(index), self.visual),
        }


class MultimodalSamples:
    """A MultimodalJsonlDataset as packing samples (`data.packed.SamplePacks`): sample i = (ids, loss flags) of
    one jsonl sample's layout (at most seq_length + 1 ids, media never cut), its media, its loss tokens."""

    def __init__(self, dataset: MultimodalJsonlDataset):
        self.dataset = dataset
        # A sample without a loss token weighs 0 under square averaging; leaving it out only saves compute.
        self.keep = [i for i in range(len(dataset)) if dataset.loss_tokens(i) > 0]
        self.sample_lengths = np.array([len(dataset.ids(i)) - 1 for i in self.keep], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.dataset.ids(self.keep[i])
        return np.asarray(ids, dtype=np.int64), self.dataset.loss_flags(ids)

    def media(self, i: int) -> list:
        return self.dataset.media_items(self.keep[i])

    def loss_tokens(self, i: int) -> int:
        return self.dataset.loss_tokens(self.keep[i])

    def load_media(self, items: list) -> dict:
        return load_media(items, self.dataset.visual)


def collate(samples: list[dict], create_attention_mask: bool) -> dict:
    batch = {k: torch.stack([s[k] for s in samples]) for k in ("tokens", "labels", "loss_mask", "position_ids")}
    batch.update(collate_vision([{k: s[k] for k in VISION_KEYS if k in s} for s in samples]))
    batch["ts_values"] = [x for s in samples for x in s["ts_values"]]
    batch["ts_rates"] = [r for s in samples for r in s["ts_rates"]]
    if create_attention_mask:
        s = batch["tokens"].shape[1]
        batch["attention_mask"] = (torch.tril(torch.ones(s, s)) < 0.5).view(1, 1, s, s)
    return batch
