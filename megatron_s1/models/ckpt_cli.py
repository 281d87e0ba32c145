"""`megatron-s1 ckpt <tool>`: checkpoint tools.

To add a tool, write `def _register_<name>(ckpt_subparsers)` that adds one parser (with set_defaults(func=...))
and append it to CKPT_COMMANDS.
"""
from __future__ import annotations

import json


def _cmd_expand_experts(args) -> int:
    from megatron_s1.models.pro.expand import expand_checkpoint

    report = expand_checkpoint(args.input, args.output, args.groups, args.experts_per_group, topk=args.topk,
                               data=args.data, num_batches=args.batches, micro_batch_size=args.micro_batch_size,
                               seq_length=args.seq_length)
    if not args.show_plans:
        report.pop("plans")
    print(json.dumps(report, indent=1), flush=True)
    return 0


def _register_expand_experts(sub) -> None:
    p = sub.add_parser(
        "expand-experts", help="grow an MoE checkpoint to G groups x S experts (Intern-S1-Pro expansion)",
        description="Copy every expert (and its router row) G*S/E times, placing each token's former top-1/top-2 "
        "experts in every group (statistics from a short routing pass), then compare the expanded model's logits "
        "with the original on the same tokens. Writes a model-only checkpoint: train from it with "
        "checkpoint.pretrained=OUTPUT model.num_moe_experts=G*S model.moe_router_groups=G model.moe_router_topk=K.")
    p.add_argument("--input", required=True, help="checkpoint directory (iter_*) or a run's checkpoints/ directory")
    p.add_argument("--output", required=True, help="directory of the expanded checkpoint")
    p.add_argument("--groups", type=int, required=True, help="G routing groups (use the EP size for exact balance)")
    p.add_argument("--experts-per-group", type=int, required=True, help="S experts per group (G*S new experts)")
    p.add_argument("--topk", type=int, default=None,
                   help="experts per token after expansion (default: the old top-k if G divides it, else G)")
    p.add_argument("--data", default=None, help="dataset prefix (.bin/.idx) for the routing pass "
                   "(default: the last data.blend entry of the checkpoint's config)")
    p.add_argument("--batches", type=int, default=4, help="micro-batches in the routing pass (default 4)")
    p.add_argument("--micro-batch-size", type=int, default=4, help="sequences per micro-batch (default 4)")
    p.add_argument("--seq-length", type=int, default=None, help="tokens per sequence (default data.seq_length)")
    p.add_argument("--show-plans", action="store_true", help="include the per-layer expert placement in the report")
    p.set_defaults(func=_cmd_expand_experts)


CKPT_COMMANDS = [_register_expand_experts]
from megatron_s1.rl.ckpt_average import register_average  # noqa: E402  (megatron-s1 ckpt average)
CKPT_COMMANDS.append(register_average)


def register(subparsers) -> None:
    p = subparsers.add_parser("ckpt", help="checkpoint tools (expand-experts, ...)",
                              description="Checkpoint tools; run `megatron-s1 ckpt <tool> --help`.")
    sub = p.add_subparsers(dest="ckpt_command", required=True, metavar="<tool>")
    for add in CKPT_COMMANDS:
        add(sub)
