"""HF side of the conversion: a sharded safetensors reader (tensor at a time) and a bounded-size shard writer."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_s1.conversion.mappings import ConversionError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class HFCheckpoint:
    """Tensor names, shapes and dtypes of an HF safetensors checkpoint; tensors are read one at a time."""

    def __init__(self, hf_dir: str):
        if not os.path.isdir(hf_dir):
            raise ConversionError(f"HF checkpoint directory {hf_dir!r} does not exist")
        self.dir = hf_dir
        index_path = os.path.join(hf_dir, INDEX_NAME)
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as f:
                self.weight_map = dict(json.load(f)["weight_map"])
        elif os.path.exists(os.path.join(hf_dir, SINGLE_NAME)):
            with safe_open(os.path.join(hf_dir, SINGLE_NAME), framework="pt") as f:
                self.weight_map = {name: SINGLE_NAME for name in f.keys()}
        else:
            raise ConversionError(f"{hf_dir!r} has neither {INDEX_NAME} nor {SINGLE_NAME}; only safetensors "
                                  "checkpoints are supported")
        files = sorted(set(self.weight_map.values()))
        missing = [name for name in files if not os.path.exists(os.path.join(hf_dir, name))]
        if missing:
            raise ConversionError(f"missing shard {missing[0]} in {hf_dir} (listed in {INDEX_NAME}); "
                                  "download the complete checkpoint")
        self.shapes: dict = {}
        self.dtypes: dict = {}
        for name in files:
            with safe_open(os.path.join(hf_dir, name), framework="pt") as f:
                for key in f.keys():
                    sl = f.get_slice(key)
                    self.shapes[key] = tuple(sl.get_shape())
                    self.dtypes[key] = _DTYPES[sl.get_dtype()]
        absent = [k for k in self.weight_map if k not in self.shapes]
        if absent:
            raise ConversionError(f"tensor {absent[0]!r} is listed in {INDEX_NAME} but missing from shard "
                                  f"{self.weight_map[absent[0]]}; the checkpoint is incomplete")

    def get(self, name: str) -> torch.Tensor:
        # Opened per read: the memory map is released right after, so resident memory stays at one tensor.
        with safe_open(os.path.join(self.dir, self.weight_map[name]), framework="pt") as f:
            return f.get_tensor(name)


def parse_size(text: str) -> int:
    text = str(text).strip().upper()
    for suffix, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(text)


class ShardWriter:
    """Buffers tensors up to `max_shard_bytes`, then writes a safetensors shard; `close()` writes the index."""

    def __init__(self, out_dir: str, max_shard_bytes: int):
        self.out_dir = out_dir
        self.max_bytes = max_shard_bytes
        self.buffer: dict = {}
        self.buffer_bytes = 0
        self.shards: list = []  # list of lists of tensor names
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffer_bytes + size > self.max_bytes:
            self._flush()
        self.buffer[name] = tensor.contiguous()
        self.buffer_bytes += size
        self.total += size

    def _flush(self) -> None:
        if not self.buffer:
            return
        path = os.path.join(self.out_dir, f"shard-{len(self.shards):05d}.tmp")
        save_file(self.buffer, path, metadata={"format": "pt"})
        self.shards.append(sorted(self.buffer))
        self.buffer, self.buffer_bytes = {}, 0

    def close(self) -> None:
        self._flush()
        count = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(os.path.join(self.out_dir, f"shard-{i:05d}.tmp"), os.path.join(self.out_dir, final))
            for name in names:
                weight_map[name] = final
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(self.out_dir, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
            f.write("\n")


def read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.exists(path):
        raise ConversionError(f"{hf_dir!r} has no config.json; pass an HF model directory")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def side_files(hf_dir: str) -> list:
    """Non-weight files to carry along (config, generation config, tokenizer files, chat template, ...)."""
    out = []
    for name in sorted(os.listdir(hf_dir)):
        path = os.path.join(hf_dir, name)
        if not os.path.isfile(path) or name == INDEX_NAME or name.endswith(WEIGHT_SUFFIXES):
            continue
        out.append(name)
    return out


def torch_dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return DTYPE_NAMES.get(dtype)
