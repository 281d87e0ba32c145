"""Megatron side of the conversion: the dist_checkpointing layout of a model, a streaming writer and a
per-layer reader.

Layout: which sharded key, global shape and offset each Megatron parameter occupies. It is taken from the
model itself (built on the `meta` device at TP=PP=EP=1, so no memory is allocated) so it always matches what
`GPTModel.sharded_state_dict()` asks for at load time, under any TP/PP/EP.

Writer: a PyTorch Distributed Checkpoint (the `torch_dist` backend of dist_checkpointing) written through a
custom save planner whose `resolve_data` builds each tensor on demand, so only one parameter is in memory at
a time. The result is what `dist_checkpointing.save` would write for a TP=1 model: same keys, global shapes,
chunks, ShardedObjects (`_extra_state`), `common_state` and `metadata.json`.

Reader: `dist_checkpointing.load` with hand-built ShardedTensors covering one layer at a time, so checkpoints
saved by training under any layout (TP/PP/EP shards) are reassembled by dist_checkpointing itself.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.distributed as dist

from megatron_s1.conversion.mappings import ConversionError


@dataclass(frozen=True)
class Entry:
    """Where one Megatron parameter lives in the checkpoint."""
    key: str  # sharded key (layers/experts stacked)
    global_shape: tuple
    offset: tuple  # offset of this parameter's chunk (prepended axes first)
    prepend: int  # number of stacked axes before the parameter's own dims (layer, expert)
    shape: tuple  # the parameter's own shape

    @property
    def chunk_shape(self) -> tuple:
        return (1,) * self.prepend + tuple(self.shape)


@dataclass
class Layout:
    params: dict  # Megatron parameter name -> Entry
    objects: dict  # ShardedObject unique key -> python object to store (e.g. None for empty extra state)


# ------------------------------------------------------------------------------------------- process group
def ensure_single_process_group() -> None:
    """dist_checkpointing and parallel_state need a process group; conversion runs in one process."""
    from megatron_s1.training.distributed import init_distributed

    if not dist.is_initialized():
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            os.environ.pop(var, None)
        init_distributed()
    if dist.get_world_size() != 1:
        raise ConversionError("conversion runs in a single process; run it without torchrun")


def _honour_meta_device() -> None:
    """Make `with torch.device("meta")` apply to the torch factories again.

    The CPU bridge (`megatron_s1.compat.cpu`) replaces `torch.empty`, `torch.zeros`, ... by Python wrappers;
    torch's device context recognises factories through a cached set (`torch.utils._device._device_constructors`)
    that, when first built after the bridge, lists the wrappers instead of the real functions, so the context
    is silently ignored and the "meta" model gets real CPU storage (whose initialisation touches every page:
    the whole vision tower in fp32). Rebuild the set from the real factories the wrappers call.
    """
    import torch.utils._device as device_mod

    swapped = {}
    for name in dir(torch):
        fn = getattr(torch, name, None)
        original = (getattr(fn, "__kwdefaults__", None) or {}).get("__original") if callable(fn) else None
        if original is not None:
            swapped[name] = fn
            setattr(torch, name, original)
    if not swapped:
        return
    try:
        device_mod._device_constructors.cache_clear()
        device_mod._device_constructors()
    finally:
        for name, fn in swapped.items():
            setattr(torch, name, fn)


def is_multimodal(cfg) -> bool:
    return cfg.train.task == "mm_pretrain" and (cfg.vision.preset is not None or cfg.timeseries.preset is not None)


def build_layout(cfg) -> Layout:
    """Sharded layout of the model described by `cfg` (an ExperimentConfig), via a meta-device model.

    Multimodal configs (train.task=mm_pretrain) build InternS1Model. Its vision heads are zero-padded to a
    multiple of `cfg.parallel.tensor` (a property of the stored tensors, unlike every other dimension), so
    the head-dependent vision entries are widened to that padding here.
    """
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, apply_factories

    from megatron_s1.config.schema import config_from_dict
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.distributed import initialize_model_parallel

    ensure_single_process_group()
    multimodal = is_multimodal(cfg)
    tp = cfg.parallel.tensor
    values = cfg.to_dict()
    values["parallel"] = {}  # TP=PP=EP=1: the layout of the whole model in one process
    values["model"]["spec"] = "local"
    values["model"]["moe_experts"] = "auto"  # SequentialMLP: the conversion rules name experts one by one
    values["model"]["params_dtype"] = "fp32"
    single = config_from_dict(values)
    initialize_model_parallel(single)
    try:
        tconfig = build_transformer_config(single)
        tconfig.perform_initialization = False
        _honour_meta_device()
        with torch.device("meta"):
            if multimodal:
                from megatron_s1.models.interns1.model import InternS1Model

                model = InternS1Model(single, tconfig, pre_process=True, post_process=True)
            else:
                model = build_language_model(single, tconfig, pre_process=True, post_process=True)
        sharded = model.sharded_state_dict()
        apply_factories(sharded)
    finally:
        parallel_state.destroy_model_parallel()

    params_meta = dict(model.state_dict(keep_vars=True))
    params: dict = {}
    objects: dict = {}
    for name, value in sharded.items():
        pieces = value if isinstance(value, list) else [value]
        if all(isinstance(p, ShardedObject) for p in pieces):
            for p in pieces:
                objects[p.unique_key] = p.data
            continue
        if not all(isinstance(p, ShardedTensor) for p in pieces):
            raise ConversionError(f"unexpected sharded entry {name!r} ({type(value).__name__}) in the model")
        params[name] = _merge_pieces(name, pieces, tuple(params_meta[name].shape))
    if multimodal and cfg.vision.preset is not None:
        _pad_vision_heads(params, cfg.vision, tp)
    return Layout(params=params, objects=objects)


def vision_padded_heads(vision, tp: int) -> int:
    from megatron_s1.models.vision.internvit import padded_num_heads

    return padded_num_heads(vision.num_attention_heads, tp)


def _pad_vision_heads(params: dict, vision, tp: int) -> None:
    """Widen the head axis of the vision attention entries from the real heads to the TP-padded heads."""
    heads = vision.num_attention_heads
    padded = vision_padded_heads(vision, tp)
    if padded == heads:
        return
    dims = {"self_attention.linear_qkv.weight": 0, "self_attention.linear_qkv.bias": 0,
            "self_attention.q_layernorm.weight": 0, "self_attention.k_layernorm.weight": 0,
            "self_attention.linear_proj.weight": 1}
    for name, e in list(params.items()):
        if not name.startswith("vision_model."):
            continue
        dim = next((d for suffix, d in dims.items() if name.endswith(suffix)), None)
        if dim is None:
            continue
        if e.prepend:
            raise ConversionError(f"vision parameter {name!r} is stacked; unsupported layout")
        shape = list(e.shape)
        shape[dim] = shape[dim] // heads * padded
        params[name] = Entry(key=e.key, global_shape=tuple(shape), offset=e.offset, prepend=0, shape=tuple(shape))


def _merge_pieces(name: str, pieces, shape: tuple) -> Entry:
    """At TP=1 the pieces of one parameter (e.g. SwiGLU gate/up halves) tile it; describe it as one chunk."""
    first = pieces[0]
    prepend = first.prepend_axis_num
    stacked = tuple(first.global_offset[:prepend])
    numel = 0
    for p in pieces:
        if p.key != first.key or p.prepend_axis_num != prepend or tuple(p.global_offset[:prepend]) != stacked:
            raise ConversionError(f"parameter {name!r} spans several sharded keys; unsupported layout")
        own = p.global_offset[prepend:]
        if any(o + s > d for o, s, d in zip(own, p.local_shape, shape)):
            raise ConversionError(f"parameter {name!r}: piece outside the parameter; unsupported layout")
        numel += int(torch.Size(p.local_shape).numel())
    if numel != int(torch.Size(shape).numel()):
        raise ConversionError(f"parameter {name!r}: pieces do not tile the parameter; unsupported layout")
    return Entry(key=first.key, global_shape=tuple(first.global_shape), offset=stacked + (0,) * len(shape),
                 prepend=prepend, shape=shape)


# ----------------------------------------------------------------------------------------------- writer
def write_checkpoint(out_dir: str, layout: Layout, dtypes: dict, make_tensor: Callable[[str], torch.Tensor],
                     common: dict, order: Optional[Iterable[str]] = None) -> None:
    """Write a dist_checkpointing (torch_dist) checkpoint; `make_tensor(name)` is called once per parameter.

    `dtypes[name]` is the stored dtype of each parameter (known before any tensor is built).
    """
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    names = list(order) if order is not None else list(layout.params)
    if set(names) != set(layout.params):
        missing = sorted(set(layout.params) - set(names))
        raise ConversionError(f"no source for Megatron parameters {missing[:3]}...")

    items, by_index = [], {}
    for name in names:
        e = layout.params[name]
        index = MetadataIndex(e.key, torch.Size(e.offset))
        items.append(WriteItem(index=index, type=WriteItemType.SHARD, tensor_data=TensorWriteData(
            chunk=ChunkStorageMetadata(offsets=torch.Size(e.offset), sizes=torch.Size(e.chunk_shape)),
            properties=TensorProperties(dtype=dtypes[name]), size=torch.Size(e.global_shape))))
        by_index[index] = ("tensor", name)
    objects = dict(layout.objects)
    objects["common_state/shard_0_1"] = common
    for unique_key, data in objects.items():
        index = MetadataIndex(unique_key)
        items.append(WriteItem(index=index, type=WriteItemType.BYTE_IO))
        by_index[index] = ("object", data)

    class StreamingPlanner(DefaultSavePlanner):
        def __init__(self):
            super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

        def create_local_plan(self) -> SavePlan:
            self.plan = SavePlan(items=items)
            return self.plan

        def resolve_data(self, write_item):
            kind, value = by_index[write_item.index]
            if kind == "object":
                buffer = io.BytesIO()
                torch.save([value], buffer)
                buffer.seek(0)
                return buffer
            e = layout.params[value]
            tensor = make_tensor(value)
            if tuple(tensor.shape) != tuple(e.shape):
                raise ConversionError(f"{value}: built shape {tuple(tensor.shape)} != expected {e.shape}")
            if tensor.dtype != dtypes[value]:
                raise ConversionError(f"{value}: dtype {tensor.dtype} != expected {dtypes[value]}")
            return tensor.reshape(e.chunk_shape).contiguous()

    os.makedirs(out_dir, exist_ok=True)
    # One file, one thread, no copy-ahead: tensors are built, written and dropped one at a time.
    writer = FileSystemWriter(out_dir, single_file_per_rank=True, sync_files=True, thread_count=1,
                              per_thread_copy_ahead=0)
    dcp_save(state_dict={}, storage_writer=writer, planner=StreamingPlanner(), no_dist=True)
    save_config(CheckpointingConfig("torch_dist", 1), out_dir)


# ----------------------------------------------------------------------------------------------- reader
def stored_dtypes(ckpt_dir: str) -> dict:
    """Sharded key -> (global shape, dtype) as stored in a torch_dist checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(ckpt_dir).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in meta.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def read_params(ckpt_dir: str, layout: Layout, names: list, stored: dict) -> dict:
    """Load the given Megatron parameters (whole, TP=1 view) from a checkpoint saved under any layout.

    Reads go straight through PyTorch DCP with a planner that maps each requested region onto the stored
    chunks overlapping it (TP/EP shards, per-layer chunks), so only these parameters are materialised.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    targets, out = {}, {}
    for name in names:
        e = layout.params[name]
        if e.key not in stored:
            raise ConversionError(f"checkpoint {ckpt_dir} has no tensor {e.key!r} (needed for {name})")
        shape, dtype = stored[e.key]
        if shape != e.global_shape:
            raise ConversionError(f"checkpoint tensor {e.key!r} has shape {shape}, the config implies "
                                  f"{e.global_shape}; config and weights disagree")
        tensor = torch.empty(e.shape, dtype=dtype)
        out[name] = tensor
        targets[(e.key, torch.Size(e.offset))] = tensor.view(e.chunk_shape)

    planner = _region_planner(ckpt_dir, targets)
    dcp_load({}, storage_reader=FileSystemReader(ckpt_dir), planner=planner, no_dist=True)
    planner.targets = None  # drop references now rather than at the next cyclic GC
    return out


def _region_planner(ckpt_dir: str, targets: dict):
    """A DCP load planner that reads each (key, chunk offset) region into `targets[(key, offset)]`."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    global _RegionPlanner
    if _RegionPlanner is None:
        class RegionPlanner(DefaultLoadPlanner):
            def __init__(self, ckpt_dir, targets):
                super().__init__()
                self.ckpt_dir, self.targets = ckpt_dir, targets

            def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
                self.metadata = metadata
                self.is_coordinator = is_coordinator

            def create_local_plan(self) -> LoadPlan:
                items = []
                for (key, offset), target in self.targets.items():
                    chunk = ChunkStorageMetadata(offsets=offset, sizes=target.shape)
                    found = create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [chunk])
                    covered = sum(int(torch.Size(r.lengths).numel()) for r in found)
                    if covered != target.numel():
                        raise ConversionError(f"checkpoint {self.ckpt_dir}: {key} at {tuple(offset)} is incomplete")
                    items.extend(found)
                return LoadPlan(items)

            def resolve_tensor(self, read_item):
                target = self.targets[(read_item.dest_index.fqn, read_item.dest_index.offset)]
                for dim, (start, length) in enumerate(zip(read_item.dest_offsets, read_item.lengths)):
                    target = target.narrow(dim, start, length)
                return target

            def commit_tensor(self, read_item, tensor):
                pass

        _RegionPlanner = RegionPlanner
    return _RegionPlanner(ckpt_dir, targets)


_RegionPlanner = None


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
