"""`megatron-s1 rl` (registered in megatron_s1.cli.PLUGIN_COMMANDS; heavy imports happen only when it runs)."""
from __future__ import annotations

import json
import os


def _cmd_rl(args) -> int:
    from megatron_s1.config import load_config
    from megatron_s1.rl.trainer import RLTrainer

    cfg = load_config(args.config, args.overrides)
    summary = RLTrainer(cfg, rollout_dtype=args.rollout_dtype).run()
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
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rl.algorithm=grpo train.steps=50")
    p.set_defaults(func=_cmd_rl)
