"""HF <-> Megatron checkpoint conversion (Qwen3, Qwen3-MoE, InternS1, Intern-S1-Pro text): declarative tables,
streaming, atomic output.

Public API:
    hf_to_mcore(hf_dir, out_dir, tp=1, pp=1, ep=1, etp=None, force=False) -> summary dict
    mcore_to_hf(ckpt_dir, out_dir, force=False, dtype=None, max_shard_size="2GB", tokenizer=None) -> summary dict
    ARCHITECTURES, Rule, Component, ConversionError  (mapping tables; see docs/conversion.md)
"""
import importlib

# The mapping tables import torch: loaded on first use, so `megatron-s1 --help` (which imports conversion.cli) stays
# torch-free.
_FROM_MAPPINGS = ("ARCHITECTURES", "Component", "ConversionError", "Rule")


def __getattr__(name: str):
    if name in _FROM_MAPPINGS:
        return getattr(importlib.import_module("megatron_s1.conversion.mappings"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def hf_to_mcore(*args, **kwargs):
    from megatron_s1.conversion.convert import hf_to_mcore as impl

    return impl(*args, **kwargs)


def mcore_to_hf(*args, **kwargs):
    from megatron_s1.conversion.convert import mcore_to_hf as impl

    return impl(*args, **kwargs)


__all__ = ["ARCHITECTURES", "Component", "ConversionError", "Rule", "hf_to_mcore", "mcore_to_hf"]
