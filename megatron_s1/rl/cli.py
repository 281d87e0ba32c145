"""`megatron-s1 rl` (registered in megatron_s1.cli.PLUGIN_COMMANDS; heavy imports happen only when it runs)."""
from __future__ import annotations

import json
import os


def _cmd_rl(args) -> int:
    from megatron_s1.config import ConfigError, load_config
    from megatron_s1.rl.trainer import RLTrainer

    cfg = load_config(args.config, args.overrides)
    trainer = RLTrainer(cfg, rollout_dtype=args.rollout_dtype)
    if args.offline_filter:
        if not args.output:
            raise ConfigError("--offline-filter needs --output OUT.jsonl")
        report = trainer.offline_filter(args.offline_filter, args.output, n=args.rollouts)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({"offline_filter": report}), flush=True)
        return 0
    summary = trainer.run()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"result": summary}), flush=True)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rl", help="reinforcement learning from verifiable rewards (IcePop / GRPO / OREAL)",
        description="RL driver: rollout (colocated Megatron-Core sampling or an OpenAI-compatible engine) -> "
        "rewards -> online filtering -> policy update. Writes run.dir/rl_metrics.jsonl and checkpoints. "
        "See docs/rl.md.")
    p.add_argument("--config", "-c", help="YAML recipe, e.g. examples/rl/tiny_cpu.yaml")
    p.add_argument("--rollout-dtype", default="bf16", choices=["fp32", "bf16", "fp16"],
                   help="numerics of the colocated rollout engine (bf16 mimics an inference engine; default bf16)")
    p.add_argument("--offline-filter", metavar="PROMPTS.jsonl", default=None,
                   help="instead of training: keep the prompts whose pass rate over --rollouts samples of the policy "
                   "(checkpoint.pretrained) is in (0.25, 1.0); writes --output")
    p.add_argument("--output", default=None, help="output jsonl of --offline-filter")
    p.add_argument("--rollouts", type=int, default=8, help="samples per prompt for --offline-filter (default 8)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rl.algorithm=grpo train.steps=50")
    p.set_defaults(func=_cmd_rl)
