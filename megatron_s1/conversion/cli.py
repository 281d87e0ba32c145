"""`megatron-s1 convert ...`: HF <-> Megatron checkpoint conversion.

    megatron-s1 convert hf-to-mcore --hf Qwen3-30B-A3B --out ckpt/qwen3-30b-a3b [--tp 2 --pp 2 --ep 8 --etp 1]
    megatron-s1 convert mcore-to-hf --ckpt runs/x/checkpoints --out hf/x [--dtype bfloat16] [--quantize fp8-block]

The Megatron checkpoint is a dist_checkpointing directory with trainer_state.json: start training from it with
`megatron-s1 train ... checkpoint.pretrained=ckpt/qwen3-30b-a3b` under any TP/PP/EP.
"""
from __future__ import annotations

import argparse
import json


def _cmd_hf_to_mcore(args) -> int:
    from megatron_s1.conversion.convert import hf_to_mcore

    summary = hf_to_mcore(args.hf, args.out, tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, force=args.force)
    print(json.dumps(summary), flush=True)
    return 0


def _cmd_mcore_to_hf(args) -> int:
    from megatron_s1.conversion.convert import mcore_to_hf

    summary = mcore_to_hf(args.ckpt, args.out, force=args.force, dtype=args.dtype,
                          max_shard_size=args.max_shard_size, tokenizer=args.tokenizer, quantize=args.quantize)
    print(json.dumps(summary), flush=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert checkpoints between HF (safetensors) and Megatron",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="direction", required=True, metavar="<direction>")

    h = sub.add_parser("hf-to-mcore", help="HF Qwen3 / Qwen3-MoE / InternS1 / Intern-S1-Pro (text) directory -> "
                       "Megatron dist checkpoint",
                       description="Stream an HF safetensors checkpoint into a dist_checkpointing directory that "
                       "loads under any TP/PP/EP (tensor at a time; memory bounded by the largest tensor).")
    h.add_argument("--hf", required=True, help="HF model directory (config.json + safetensors; block-FP8 weights "
                   "with a quantization_config, as Intern-S1-Pro is released, are dequantized exactly)")
    h.add_argument("--out", required=True, help="output checkpoint directory (must not exist unless --force)")
    h.add_argument("--tp", type=int, default=1, help="parallel.tensor recorded in the checkpoint config (InternS1: "
                   "also the TP whose vision-head padding is written; train with a TP of the same padding)")
    h.add_argument("--pp", type=int, default=1, help="parallel.pipeline recorded in the checkpoint config")
    h.add_argument("--ep", type=int, default=1, help="parallel.expert recorded in the checkpoint config")
    h.add_argument("--etp", type=int, default=None, help="parallel.expert_tensor (default: --tp)")
    h.add_argument("--force", action="store_true", help="replace an existing output directory")
    h.set_defaults(func=_cmd_hf_to_mcore)

    m = sub.add_parser("mcore-to-hf", help="Megatron checkpoint (any layout) -> HF safetensors directory",
                       description="Export a checkpoint (converted or trained, any TP/PP/EP) as an HF directory "
                       "that transformers' from_pretrained loads unmodified.")
    m.add_argument("--ckpt", required=True, help="checkpoint directory (iter_*) or a run's checkpoints/ root")
    m.add_argument("--out", required=True, help="output HF directory (must not exist unless --force)")
    m.add_argument("--dtype", default=None, help="cast weights (float32, bfloat16, float16); default: as stored")
    m.add_argument("--quantize", default=None, metavar="fp8-block",
                   help="write the Intern-S1-Pro release's FP8 format: e4m3 weights with 128x128 power-of-two "
                   "block scales, modules_to_not_convert in the model dtype (default: unquantized)")
    m.add_argument("--max-shard-size", default="2GB", help="safetensors shard size (default 2GB)")
    m.add_argument("--tokenizer", default=None, help="directory whose tokenizer files are copied into the output "
                   "(default: the files carried in the checkpoint, if any)")
    m.add_argument("--force", action="store_true", help="replace an existing output directory")
    m.set_defaults(func=_cmd_mcore_to_hf)


def main(argv=None) -> int:
    from megatron_s1.cli import main as cli_main

    return cli_main(["convert", *(argv or [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
