"""`hf_to_mcore` and `mcore_to_hf`: streaming, atomic conversions between HF safetensors and our checkpoints.

Output is written to a sibling temp directory and renamed into place only when complete; any error removes
it, so a failed conversion leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import shutil
import time
from typing import Optional

import torch

from megatron_s1.conversion import fp8, hf_io
from megatron_s1.conversion.hf_config import hf_to_sections, sections_to_hf
from megatron_s1.conversion.mappings import ConversionError, Replicate, Shapes, expand, get_architecture
from megatron_s1.conversion.mcore_io import (build_layout, is_multimodal, read_params, stored_dtypes,
                                             vision_padded_heads, write_checkpoint)

HF_SUBDIR = "hf"  # inside a converted Megatron checkpoint: the original config.json, tokenizer files, ...
# Inside HF_SUBDIR of a checkpoint converted from block FP8: the release's scales as stored, each under its weight's
# name (an HF safetensors directory), reused on `--quantize fp8-block` export for every block they still represent
# exactly (bit-identical round trip).
FP8_SCALES_SUBDIR = "fp8_scales"
STATE_FILE = "trainer_state.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _check_output(out_dir: str, force: bool) -> None:
    if os.path.exists(out_dir) and not force:
        raise ConversionError(f"output directory {os.path.abspath(out_dir)} already exists; pass --force to replace it")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str, force: bool):
    """Yield a temp dir next to `out_dir`; rename it to `out_dir` on success, delete it on any failure."""
    _check_output(out_dir, force)
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _flags(cfg) -> set:
    model = cfg.model
    flags = {"moe" if model.num_moe_experts else "dense"}
    if model.untie_embeddings_and_output_weights:
        flags.add("untied")
    if model.qk_layernorm:
        flags.add("qk_norm")
    if model.position_embedding_type == "fope":
        flags.add("fope")
    if is_multimodal(cfg) and cfg.vision.preset is not None:
        v = cfg.vision
        if v.qk_layernorm:
            flags.add("vit_qk_norm")
        if v.add_qkv_bias:
            flags.add("vit_qkv_bias")
        if v.normalization == "LayerNorm":
            flags.add("vit_norm_bias")
    return flags


def _shapes(cfg) -> dict:
    m = cfg.model
    out = {"text": Shapes(hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
                          num_query_groups=m.num_query_groups, head_dim=m.kv_channels)}
    if is_multimodal(cfg) and cfg.vision.preset is not None:
        v = cfg.vision
        out["vision"] = Shapes(hidden_size=v.hidden_size, num_attention_heads=v.num_attention_heads,
                               num_query_groups=v.num_attention_heads,
                               head_dim=v.hidden_size // v.num_attention_heads,
                               padded_heads=vision_padded_heads(v, cfg.parallel.tensor))
    return out


def _rules(arch, cfg) -> list:
    layers = {"text": cfg.model.num_layers, "vision": cfg.vision.num_layers}
    return expand(arch.components_for(is_multimodal(cfg)), layers, cfg.model.num_moe_experts, _flags(cfg))


def _experiment_config(sections: dict, tp: int, pp: int, ep: int, etp: Optional[int]):
    from megatron_s1.config.schema import ConfigError, ExperimentConfig, config_from_dict
    from megatron_s1.models.language import validate_model_parallel

    base = ExperimentConfig().to_dict()
    for section, fields in sections.items():
        base[section].update(fields)
    base["parallel"].update(tensor=tp, pipeline=pp, expert=ep, expert_tensor=etp)
    cfg = config_from_dict(base)
    world = pp * math.lcm(tp, (etp or tp) * ep)
    try:
        validate_model_parallel(cfg.model, cfg.parallel, world)
    except ConfigError as err:
        raise ConversionError(f"requested layout does not fit the model: {err}") from None
    return cfg


# --------------------------------------------------------------------------------------------- HF -> mcore
def hf_to_mcore(hf_dir: str, out_dir: str, tp: int = 1, pp: int = 1, ep: int = 1, etp: Optional[int] = None,
                force: bool = False) -> dict:
    start = time.time()
    _check_output(out_dir, force)  # fail before any work
    hf_config = hf_io.read_hf_config(hf_dir)
    arch_name, sections = hf_to_sections(hf_config)
    arch = get_architecture(arch_name)
    cfg = _experiment_config(sections, tp, pp, ep, etp)
    ckpt = hf_io.HFCheckpoint(hf_dir, hf_config)
    rules = _rules(arch, cfg)
    shapes = _shapes(cfg)

    # Plan everything from headers before writing a byte: names, shapes, dtypes.
    layout = build_layout(cfg)
    by_mcore = {r.mcore: r for r in rules}
    if set(by_mcore) != set(layout.params):
        extra = sorted(set(by_mcore) ^ set(layout.params))
        raise ConversionError(f"mapping table and Megatron model disagree on {extra[:4]}; the table for "
                              f"{arch_name} does not match this Megatron version")
    dtypes, used = {}, set()
    for rule in rules:
        absent = [h for h in rule.hf if h not in ckpt.shapes]
        if absent:
            raise ConversionError(f"HF checkpoint {hf_dir} lacks tensor {absent[0]!r} required by config.json "
                                  f"({arch_name}); config and weights disagree")
        got = rule.transform.mcore_shape([ckpt.shapes[h] for h in rule.hf], shapes[rule.part])
        want = layout.params[rule.mcore].shape
        if tuple(got) != tuple(want):
            shown = ", ".join(f"{h} {ckpt.shapes[h]}" for h in rule.hf)
            raise ConversionError(f"shape mismatch: {shown} gives {tuple(got)} but config.json implies {want} "
                                  f"for {rule.mcore}; config and weights disagree")
        kinds = {ckpt.dtypes[h] for h in rule.hf}
        if len(kinds) != 1:
            raise ConversionError(f"tensors {rule.hf} have different dtypes {kinds}")
        dtypes[rule.mcore] = kinds.pop()
        used.update(rule.hf)
    ignorable = set() if "untied" in _flags(cfg) else {"lm_head.weight"}  # tied: lm_head is the embedding
    unused = sorted(set(ckpt.shapes) - used - ignorable)
    if unused:
        raise ConversionError(f"HF checkpoint has {len(unused)} tensors the {arch_name} table does not map, e.g. "
                              f"{unused[0]!r}; refusing to drop weights")

    def make_tensor(name: str) -> torch.Tensor:
        rule = by_mcore[name]
        return rule.transform.to_mcore([ckpt.get(h) for h in rule.hf], shapes[rule.part])

    stored_dtype = next(iter(dtypes.values()))
    with atomic_output_dir(out_dir, force) as tmp:
        write_checkpoint(tmp, layout, dtypes, make_tensor, common={"content_metadata": _content_metadata()},
                         order=[r.mcore for r in rules])
        os.makedirs(os.path.join(tmp, HF_SUBDIR))
        for name in hf_io.side_files(hf_dir):
            shutil.copy2(os.path.join(hf_dir, name), os.path.join(tmp, HF_SUBDIR, name))
        if ckpt.scales:
            _copy_scales(ckpt, os.path.join(tmp, HF_SUBDIR, FP8_SCALES_SUBDIR))
        state = {
            "step": 0, "consumed_tokens": 0, "consumed_samples": 0, "skipped_steps": 0,
            "layout": {"tensor": 1, "pipeline": 1, "virtual_pipeline": None, "expert": 1, "expert_tensor": 1,
                       "context": 1, "world_size": 1, "distributed_optimizer": False, "spec": "local",
                       "experts": None if cfg.model.num_moe_experts is None else "sequential"},
            "config": cfg.to_dict(),
            "converted_from": {"format": "hf", "architecture": arch_name, "path": os.path.abspath(hf_dir),
                               "dtype": hf_io.torch_dtype_name(stored_dtype)},
        }
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1)
    summary = {"architecture": arch_name, "tensors": len(rules), "seconds": round(time.time() - start, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1), "out": os.path.abspath(out_dir)}
    if ckpt.scales:
        summary["dequantized"] = {"tensors": len(ckpt.scales), "to": hf_io.torch_dtype_name(ckpt.dequantized_dtype),
                                  "block": list(ckpt.fp8.block)}
    return summary


def _copy_scales(ckpt, out_dir: str) -> None:
    """The checkpoint's FP8 scales as stored, named by their weights, streamed into an HF safetensors directory."""
    os.makedirs(out_dir)
    plan = [(weight, *ckpt.scale_specs[scale]) for weight, scale in sorted(ckpt.scales.items())]
    writer = hf_io.ShardWriter(out_dir, plan, hf_io.parse_size("2GB"))
    for weight, *_ in plan:
        writer.add(weight, ckpt.raw(ckpt.scales[weight]))
    writer.close()


def _content_metadata() -> dict:
    # Same content metadata the trainer writes (see training/checkpointing.py).
    return {"distrib_optim_sharding_type": "dp_reshardable", "chained_optim_avoid_prefix": True}


# --------------------------------------------------------------------------------------------- mcore -> HF
def _resolve_ckpt(path: str) -> str:
    from megatron_s1.config.schema import ConfigError
    from megatron_s1.training.checkpointing import resolve_checkpoint_dir

    if not os.path.exists(path):
        raise ConversionError(f"checkpoint {path!r} does not exist")
    try:
        return resolve_checkpoint_dir(path)
    except ConfigError as err:
        raise ConversionError(str(err)) from None


def _infer_architecture(cfg, model: dict) -> str:
    if is_multimodal(cfg):
        if cfg.vision.preset is not None and cfg.vision.arch == "pro":
            return "InternS1ProForConditionalGeneration"
        if cfg.vision.preset is None:
            raise ConversionError("checkpoint has no vision tower; only InternS1 (vision) multimodal models "
                                  "export to HF")
        return "InternS1ForConditionalGeneration"
    if model.get("moe_router_groups") or model.get("position_embedding_type") == "fope":
        return "InternS1ProForConditionalGeneration"
    problems = []
    if not model["qk_layernorm"]:
        problems.append("model.qk_layernorm=false")
    if model["add_qkv_bias"]:
        problems.append("model.add_qkv_bias=true")
    if model["activation"] != "swiglu" or model["normalization"] != "RMSNorm":
        problems.append("activation/normalization other than swiglu/RMSNorm")
    if model.get("moe_shared_expert_intermediate_size"):
        problems.append("shared experts")
    if problems:
        raise ConversionError(f"checkpoint model cannot be expressed as a Qwen3 HF model ({', '.join(problems)})")
    return "Qwen3MoeForCausalLM" if model.get("num_moe_experts") else "Qwen3ForCausalLM"


def mcore_to_hf(ckpt_dir: str, out_dir: str, force: bool = False, dtype: Optional[str] = None,
                max_shard_size: str = "2GB", tokenizer: Optional[str] = None, quantize: Optional[str] = None) -> dict:
    """`quantize="fp8-block"` writes the release's block-FP8 format (conversion/fp8.py) with the original
    quantization_config when the checkpoint carries one, else the release's defaults; without it every tensor
    is written unquantized and config.json has no quantization_config."""
    from megatron_s1.config.schema import config_from_dict

    start = time.time()
    _check_output(out_dir, force)  # fail before any work
    if quantize not in (None, fp8.METHOD):
        raise ConversionError(f"--quantize {quantize!r} is not supported; the only format is {fp8.METHOD}")
    ckpt_dir = _resolve_ckpt(ckpt_dir)
    with open(os.path.join(ckpt_dir, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    cfg = config_from_dict(state["config"])
    cfg.model.fp8 = None
    cfg.model.recompute = None
    if is_multimodal(cfg) and cfg.timeseries.preset is not None:
        cfg.timeseries.preset = None  # the HF InternS1 format has no time-series encoder: it is not exported
        dropped_timeseries = True
    else:
        dropped_timeseries = False
    model = cfg.to_dict()["model"]
    source = state.get("converted_from") or {}
    arch_name = source.get("architecture") or _infer_architecture(cfg, model)
    arch = get_architecture(arch_name)
    rules = _rules(arch, cfg)
    shapes = _shapes(cfg)
    layout = build_layout(cfg)
    if {r.mcore for r in rules} != set(layout.params):
        extra = sorted({r.mcore for r in rules} ^ set(layout.params))
        raise ConversionError(f"mapping table and Megatron model disagree on {extra[:4]}")
    stored = stored_dtypes(ckpt_dir)
    cast = None
    if dtype is not None:
        cast = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}.get(dtype)
        if cast is None:
            raise ConversionError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    out_dtype = cast or stored[layout.params[rules[0].mcore].key][1]

    # Group by layer: one layer's tensors in memory at a time.
    groups: dict = {}
    for rule in rules:
        groups.setdefault(rule.layer, []).append(rule)
    hf_source = os.path.join(ckpt_dir, HF_SUBDIR)
    base_config = None
    if os.path.exists(os.path.join(hf_source, "config.json")):
        with open(os.path.join(hf_source, "config.json"), encoding="utf-8") as f:
            base_config = json.load(f)
    sections = {"model": model, "vision": cfg.to_dict()["vision"]}
    hf_config = sections_to_hf(arch_name, sections, base_config, hf_io.torch_dtype_name(out_dtype),
                               cast=cast is not None)

    # HF tensor shapes in write order (transforms applied to meta tensors), so shard headers go first.
    order = sorted(groups, key=lambda x: -1 if x is None else x)
    plan, planned = [], set()
    for layer in order:
        for rule in groups[layer]:
            dt = cast or stored[layout.params[rule.mcore].key][1]
            meta = torch.empty(layout.params[rule.mcore].shape, dtype=dt, device="meta")
            for name, part in zip(rule.hf, rule.transform.to_hf(meta, shapes[rule.part])):
                if name in planned:  # replicated tensors (FoPE coefficients): the first copy is exported
                    if not isinstance(rule.transform, Replicate):
                        raise ConversionError(f"internal: HF tensor {name} produced twice")
                    continue
                planned.add(name)
                plan.append((name, tuple(part.shape), dt))
    hf_config.pop("quantization_config", None)
    fmt, quantized, priors = None, set(), None
    if quantize:
        original = (base_config or {}).get("quantization_config")
        if original is not None:
            fmt = fp8.BlockFP8.parse(original)
        else:
            fmt = fp8.BlockFP8.default({name: shape for name, shape, _ in plan})
        hf_config["quantization_config"] = fmt.config
        quantized = {name for name, shape, _ in plan if fmt.quantizes(name, len(shape))}
        scales_dir = os.path.join(hf_source, FP8_SCALES_SUBDIR)
        priors = hf_io.HFCheckpoint(scales_dir) if os.path.isdir(scales_dir) else None
        scale_dtype = next(iter(priors.dtypes.values())) if priors else fp8.DEFAULT_SCALE_DTYPE
        plan = [entry for name, shape, dt in plan for entry in (
            [(name, shape, fp8.WEIGHT_DTYPE), (fp8.scale_name(name), fp8.scale_shape(shape, fmt.block), scale_dtype)]
            if name in quantized else [(name, shape, dt)])]
    with atomic_output_dir(out_dir, force) as tmp:
        writer = hf_io.ShardWriter(tmp, plan, hf_io.parse_size(max_shard_size))
        written, first_copy, diverged = set(), {}, set()
        for layer in order:
            group = groups[layer]
            params = read_params(ckpt_dir, layout, [r.mcore for r in group], stored)
            for rule in group:
                tensor = params.pop(rule.mcore)
                if cast is not None:
                    tensor = tensor.to(cast)
                for name, part in zip(rule.hf, rule.transform.to_hf(tensor, shapes[rule.part])):
                    if name not in written:
                        written.add(name)
                        if name in quantized:
                            prior = priors.raw(name) if priors and name in priors.shapes else None
                            weight, scales = fp8.quantize(part, fmt.block, fmt.ue8m0, prior)
                            writer.add(name, weight)
                            writer.add(fp8.scale_name(name), scales.to(scale_dtype))
                        else:
                            writer.add(name, part)
                        if isinstance(rule.transform, Replicate):
                            first_copy[name] = part.clone()
                    elif not torch.equal(first_copy[name], part):
                        diverged.add(name)  # per-layer copies trained apart (fope_learnable): HF holds one
                del tensor
            del params
            gc.collect()  # DCP objects form reference cycles; free this layer's buffers before the next
        writer.close()
        copied = set()
        for src in ([tokenizer] if tokenizer else []) + [hf_source]:
            if src and os.path.isdir(src):
                for name in hf_io.side_files(src):
                    if name not in copied and name != "config.json":
                        shutil.copy2(os.path.join(src, name), os.path.join(tmp, name))
                        copied.add(name)
        if hf_config == base_config:  # untouched: byte-identical copy of the original
            shutil.copy2(os.path.join(hf_source, "config.json"), os.path.join(tmp, "config.json"))
        else:
            with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
                json.dump(hf_config, f, indent=2, sort_keys=True)
                f.write("\n")
    summary = {"architecture": arch_name, "tensors": len(rules), "seconds": round(time.time() - start, 2),
               "peak_rss_mb": round(peak_rss_mb(), 1), "out": os.path.abspath(out_dir)}
    if quantized:
        summary["quantized"] = {"tensors": len(quantized), "format": fmt.config["quant_method"],
                                "block": list(fmt.block)}
    if dropped_timeseries:
        summary["not_exported"] = "timeseries_model (the HF InternS1 format has no time-series encoder)"
    if diverged:
        summary["warning"] = (f"{', '.join(sorted(diverged))} differ across layers; the HF format has one copy, "
                              "layer 0's was written")
    return summary
