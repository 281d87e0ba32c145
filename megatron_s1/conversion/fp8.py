"""The block-FP8 checkpoint format of the Intern-S1-Pro release (`quantization_config.quant_method: fp8`).

A quantized linear weight `W` [rows, cols] is stored as `<name>` in float8 e4m3 plus `<name>_scale_inv`
[ceil(rows / b0), ceil(cols / b1)] (one scale per b0 x b1 block, `weight_block_size`; edge blocks are partial), and

    W[i, j] = e4m3[i, j] * scale_inv[i // b0, j // b1]

With `scale_fmt: ue8m0` every scale is a power of two, so the product is exact in fp32 and in bf16 (an e4m3 value
has 4 significant bits). Tensors of the modules in `modules_to_not_convert` are stored unquantized. Activations are
quantized at run time (`activation_scheme: dynamic`): the checkpoint holds no activation scales.

Reading is per tensor: any weight with a `_scale_inv` sibling is dequantized, whatever model part it belongs to.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import torch

from megatron_s1.conversion.mappings import ConversionError

METHOD = "fp8-block"  # the --quantize choice that writes this format
E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
SCALE_SUFFIX = "_scale_inv"
WEIGHT_DTYPE = torch.float8_e4m3fn
# Scale dtypes read: float32 (what DeepSeek-V3-style releases, ue8m0 ones included, store), bf16, and e8m0 bytes.
SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float8_e8m0fnu)
DEFAULT_SCALE_DTYPE = torch.float32
# A zero block has no amax; its scale is that of amax = 1e-4, the floor DeepGEMM's block quantizer applies.
AMAX_FLOOR = 1e-4
# Modules kept unquantized when writing without an original quantization_config: the release's selection
# (embeddings, LM head, MoE router gates, every vision / projector module; norms and FoPE coefficients are not
# 2-D `.weight`s, so never quantized). Only attention projections and (expert) MLP linears become FP8.
DEFAULT_NOT_CONVERTED = ("lm_head", "embed_tokens", "mlp.gate", "model.visual", "model.vision_tower",
                         "model.multi_modal_projector")


def scale_name(weight: str) -> str:
    return weight + SCALE_SUFFIX


def module_of(tensor: str) -> str:
    return tensor.rsplit(".", 1)[0]


def module_not_converted(module: str, patterns) -> bool:
    """Whether `modules_to_not_convert` keeps `module` (an HF module name) unquantized.

    Matched as transformers' FP8 loader does: a pattern matches a prefix of the name ending at a module boundary
    (`layers.1` matches `layers.1.mlp`, not `layers.11.mlp`; patterns are regular expressions), or a suffix
    (`lm_head`). The release lists full module names, for which this is the exact match vLLM and SGLang use.
    """
    return any(re.match(rf"(?:{p})(?=\.|$)", module) or module.endswith(p) for p in patterns)


def scale_shape(shape, block) -> tuple:
    return tuple(math.ceil(n / b) for n, b in zip(shape, block))


def expand_scale(scale: torch.Tensor, shape, block) -> torch.Tensor:
    """Per-block scales [R, C] as a full [rows, cols] fp32 tensor (edge blocks cropped)."""
    full = scale.float().repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    return full[: shape[0], : shape[1]]


def dequantize(weight: torch.Tensor, scale_inv: torch.Tensor, block, dtype: torch.dtype) -> torch.Tensor:
    return (weight.float() * expand_scale(scale_inv, weight.shape, block)).to(dtype)


def _block_reduce(values: torch.Tensor, block, fill: float, op) -> torch.Tensor:
    """`op` over each b0 x b1 block of a [rows, cols] tensor (edge blocks padded with `fill`)."""
    rows, cols = values.shape
    r, c = scale_shape(values.shape, block)
    padded = values.new_full((r * block[0], c * block[1]), fill)
    padded[:rows, :cols] = values
    return op(padded.reshape(r, block[0], c, block[1]).transpose(1, 2).reshape(r, c, -1), -1)


def block_scales(weight: torch.Tensor, block, ue8m0: bool) -> torch.Tensor:
    """Fresh fp32 scales: amax / 448 per block, rounded up to a power of two for ue8m0 (so |W| / scale <= 448)."""
    amax = _block_reduce(weight.float().abs(), block, 0.0, lambda t, d: t.amax(d)).clamp(min=AMAX_FLOOR)
    scale = amax / E4M3_MAX
    return torch.exp2(torch.ceil(torch.log2(scale))) if ue8m0 else scale


def quantize(weight: torch.Tensor, block, ue8m0: bool, prior: Optional[torch.Tensor] = None) -> tuple:
    """(e4m3 weight, fp32 scale_inv) of a 2-D weight.

    `prior` (the scales the weight was read with, when known) is kept for every block it still represents
    exactly: a checkpoint that was not changed is written back bit for bit, while a fresh amax scale would differ
    for blocks whose largest e4m3 value is below 448/2 (e.g. rounded down to 224). Other blocks get fresh scales.
    """
    w = weight.float()
    scale = block_scales(w, block, ue8m0)
    if prior is not None and tuple(prior.shape) == tuple(scale.shape):
        prior = prior.float()
        full = expand_scale(prior, w.shape, block)
        ratio = w / full
        exact = (ratio.abs() <= E4M3_MAX) & (ratio.clamp(-E4M3_MAX, E4M3_MAX).to(WEIGHT_DTYPE).float() * full == w)
        keep = _block_reduce(exact, block, True, lambda t, d: t.all(d))
        scale = torch.where(keep, prior, scale)
    q = (w / expand_scale(scale, w.shape, block)).clamp(-E4M3_MAX, E4M3_MAX).to(WEIGHT_DTYPE)
    return q, scale


@dataclass(frozen=True)
class BlockFP8:
    """A validated `quantization_config` of the block-FP8 format; `config` is the original dict, written back."""
    block: tuple
    ue8m0: bool
    not_converted: tuple
    config: dict

    @classmethod
    def from_hf_config(cls, hf_config: dict) -> Optional["BlockFP8"]:
        qc = hf_config.get("quantization_config")
        return None if qc is None else cls.parse(qc)

    @classmethod
    def parse(cls, qc: dict) -> "BlockFP8":
        where = "config.json quantization_config"
        method = qc.get("quant_method")
        if method != "fp8":
            raise ConversionError(f"{where}.quant_method={method!r} is not supported; only 'fp8' (e4m3 weights "
                                  "with block scales) is read: dequantize the checkpoint to bf16 first")
        if qc.get("fmt", "e4m3") != "e4m3":
            raise ConversionError(f"{where}.fmt={qc.get('fmt')!r} is not supported; only e4m3 weights are read")
        if qc.get("activation_scheme", "dynamic") != "dynamic":
            raise ConversionError(f"{where}.activation_scheme={qc.get('activation_scheme')!r} is not supported: "
                                  "static activation scales have no Megatron counterpart; use a dynamic checkpoint")
        block = qc.get("weight_block_size")
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0
                                                                           for b in block)):
            raise ConversionError(f"{where}.weight_block_size={block!r}: expected two positive integers "
                                  "(per-tensor FP8 scales are not supported)")
        scale_fmt = qc.get("scale_fmt")
        if scale_fmt not in (None, "ue8m0"):
            raise ConversionError(f"{where}.scale_fmt={scale_fmt!r} is not supported; expected 'ue8m0' or absent")
        return cls(block=tuple(block), ue8m0=scale_fmt == "ue8m0",
                   not_converted=tuple(qc.get("modules_to_not_convert") or ()), config=dict(qc))

    @classmethod
    def default(cls, shapes: dict) -> "BlockFP8":
        """The release's format for a checkpoint without an original quantization_config; its
        `modules_to_not_convert` lists every module of `shapes` (HF name -> shape) left unquantized, by full
        name, as the release does."""
        kept = sorted({module_of(n) for n, shape in shapes.items()
                       if not _quantizable(n, len(shape), DEFAULT_NOT_CONVERTED)})
        config = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "scale_fmt": "ue8m0",
                  "weight_block_size": [128, 128], "modules_to_not_convert": kept}
        return cls.parse(config)

    def quantizes(self, name: str, ndim: int) -> bool:
        """Whether the export stores HF tensor `name` (of `ndim` dims) in FP8."""
        return _quantizable(name, ndim, self.not_converted)


def _quantizable(name: str, ndim: int, not_converted) -> bool:
    return ndim == 2 and name.endswith(".weight") and not module_not_converted(module_of(name), not_converted)


def check_quantized(shapes: dict, dtypes: dict, fmt: Optional[BlockFP8], where: str) -> dict:
    """{weight name: scale name} of an HF checkpoint's quantized tensors, checked from the headers alone."""
    fp8 = sorted(n for n, dt in dtypes.items() if dt in (torch.float8_e4m3fn, torch.float8_e5m2))
    scales = sorted(n for n in shapes if n.endswith(SCALE_SUFFIX))
    if fmt is None:
        if fp8 or scales:
            name = (fp8 or scales)[0]
            raise ConversionError(f"tensor {name!r} in {where} is block-FP8 data but config.json has no "
                                  "quantization_config; restore the release's config.json")
        return {}
    out = {}
    for name in fp8:
        if dtypes[name] != WEIGHT_DTYPE:
            raise ConversionError(f"tensor {name!r} is {dtypes[name]}; the fp8 format stores e4m3 weights")
        if len(shapes[name]) != 2:
            raise ConversionError(f"FP8 tensor {name!r} has shape {shapes[name]}; block scales need a 2-D weight")
        if module_not_converted(module_of(name), fmt.not_converted):
            raise ConversionError(f"tensor {name!r} is FP8 but its module is in modules_to_not_convert; "
                                  "config.json and weights disagree")
        scale = scale_name(name)
        if scale not in shapes:
            raise ConversionError(f"FP8 tensor {name!r} has no {scale!r} in {where}; the checkpoint is "
                                  "incomplete (download every shard of the release)")
        want = scale_shape(shapes[name], fmt.block)
        if tuple(shapes[scale]) != want:
            raise ConversionError(f"scale {scale!r} has shape {tuple(shapes[scale])} but {name!r} "
                                  f"{tuple(shapes[name])} in {fmt.block[0]}x{fmt.block[1]} blocks needs {want}; "
                                  "weight_block_size and the scales disagree")
        if dtypes[scale] not in SCALE_DTYPES:
            raise ConversionError(f"scale {scale!r} is {dtypes[scale]}; expected one of "
                                  f"{', '.join(str(d) for d in SCALE_DTYPES)}")
        out[name] = scale
    orphans = sorted(set(scales) - set(out.values()))
    if orphans:
        raise ConversionError(f"scale {orphans[0]!r} belongs to no FP8 weight (its weight is missing or not "
                              "float8_e4m3fn); the checkpoint is inconsistent")
    return out
