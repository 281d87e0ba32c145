"""HF side of the conversion: a sharded safetensors reader (tensor at a time) and a bounded-size shard writer."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from safetensors import safe_open

from megatron_s1.conversion import fp8
from megatron_s1.conversion.mappings import ConversionError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
           "F8_E8M0": torch.float8_e8m0fnu}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class HFCheckpoint:
    """Tensor names, shapes and dtypes of an HF safetensors checkpoint; tensors are read one at a time.

    A block-FP8 checkpoint (`hf_config` with a quantization_config, conversion/fp8.py) is seen dequantized:
    `shapes` / `dtypes` / `get` show each FP8 weight as a tensor of the model's dtype and hide its scales
    (`scales` maps weight -> scale name; `raw` reads a stored tensor as is).
    """

    def __init__(self, hf_dir: str, hf_config: Optional[dict] = None):
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
        self.fp8 = fp8.BlockFP8.from_hf_config(hf_config or {})
        self.scales = fp8.check_quantized(self.shapes, self.dtypes, self.fp8, hf_dir)
        self.scale_specs = {s: (self.shapes[s], self.dtypes[s]) for s in self.scales.values()}  # (shape, dtype)
        if self.scales:
            self.dequantized_dtype = _config_dtype(hf_config)
            for weight, scale in self.scales.items():
                del self.shapes[scale], self.dtypes[scale]
                self.dtypes[weight] = self.dequantized_dtype

    def raw(self, name: str) -> torch.Tensor:
        # Opened per read: the memory map is released right after, so resident memory stays at one tensor.
        with safe_open(os.path.join(self.dir, self.weight_map[name]), framework="pt") as f:
            return f.get_tensor(name)

    def get(self, name: str) -> torch.Tensor:
        if name in self.scales:
            return fp8.dequantize(self.raw(name), self.raw(self.scales[name]), self.fp8.block,
                                  self.dequantized_dtype)
        return self.raw(name)


def _config_dtype(hf_config: dict) -> torch.dtype:
    """The dtype a block-FP8 checkpoint's weights are dequantized to: the config's (top level, else text_config),
    bf16 when absent. ue8m0 scales make the dequantized values exact in bf16."""
    names = {v: k for k, v in DTYPE_NAMES.items()}
    for section in (hf_config, hf_config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if section.get(key) is not None:
                if section[key] not in names:
                    raise ConversionError(f"config.json {key}={section[key]!r}: expected float32, bfloat16 or "
                                          "float16")
                return names[section[key]]
    return torch.bfloat16


def parse_size(text: str) -> int:
    text = str(text).strip().upper()
    for suffix, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(text)


_ST_DTYPES = {v: k for k, v in _DTYPES.items()}


class ShardWriter:
    """Streams tensors into safetensors shards whose headers are written up front from a plan.

    `plan` lists (name, shape, dtype) in the order the tensors will be added; shards are cut at
    `max_shard_bytes`. Each tensor's bytes go to disk as soon as it is added, so memory holds no shard buffer.
    `close()` checks completeness and writes model.safetensors.index.json.
    """

    def __init__(self, out_dir: str, plan: list, max_shard_bytes: int):
        self.out_dir = out_dir
        self.plan = plan
        shards, current, size = [], [], 0
        for name, shape, dtype in plan:
            nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = [], 0
            current.append((name, tuple(shape), dtype, nbytes))
            size += nbytes
        if current:
            shards.append(current)
        self.shards = shards
        self.file_names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        self.total = sum(n for shard in shards for *_, n in shard)
        self.position = (0, 0)  # (shard, tensor within shard) expected next
        self.stream = None

    def _open(self, index: int) -> None:
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, dtype, nbytes in self.shards[index]:
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.stream = open(os.path.join(self.out_dir, self.file_names[index]), "wb")
        self.stream.write(len(raw).to_bytes(8, "little"))
        self.stream.write(raw)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        shard, pos = self.position
        expected, shape, dtype, _ = self.shards[shard][pos]
        if (name, tuple(tensor.shape), tensor.dtype) != (expected, shape, dtype):
            raise ConversionError(f"internal: tensor {name} {tuple(tensor.shape)} {tensor.dtype} arrived where "
                                  f"{expected} {shape} {dtype} was planned")
        if pos == 0:
            self._open(shard)
        self.stream.write(memoryview(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy()))
        if pos + 1 == len(self.shards[shard]):
            self.stream.close()
            self.stream = None
            self.position = (shard + 1, 0)
        else:
            self.position = (shard, pos + 1)

    def close(self) -> None:
        if self.position != (len(self.shards), 0):
            raise ConversionError("internal: not every planned tensor was written")
        weight_map = {name: self.file_names[i] for i, shard in enumerate(self.shards) for name, *_ in shard}
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
