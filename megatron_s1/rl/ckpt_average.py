"""`megatron-s1 ckpt average`: weight averaging of checkpoints of one run (our dist_checkpointing format).

All inputs must share the model shape. The model is rebuilt on one CPU process from the first checkpoint's
stored config (any TP/PP/EP layout reshards on load), each checkpoint is loaded in turn, parameters are averaged
in fp32 (uniformly or with --weights), and a model-only checkpoint is written: train or evaluate from it with
checkpoint.pretrained=OUTPUT.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence


def average_checkpoints(inputs: Sequence[str], output: str, weights: Optional[Sequence[float]] = None) -> dict:
    import torch
    from megatron.core import dist_checkpointing

    from megatron_s1.config.schema import ConfigError, config_from_dict
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.checkpointing import (STATE_FILE, SHAPE_FIELDS, read_trainer_state,
                                                    resolve_checkpoint_dir)
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    if len(inputs) < 1:
        raise ConfigError("ckpt average needs at least one --input checkpoint")
    if weights is None:
        weights = [1.0 / len(inputs)] * len(inputs)
    if len(weights) != len(inputs):
        raise ConfigError(f"{len(weights)} weights for {len(inputs)} checkpoints; give one weight per input")
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("checkpoint weights must sum to a positive number")
    weights = [w / total for w in weights]

    init_distributed()
    dirs = [resolve_checkpoint_dir(p) for p in inputs]
    states = [read_trainer_state(d) for d in dirs]
    first = states[0]["config"]["model"]
    for d, st in zip(dirs[1:], states[1:]):
        diffs = [k for k in SHAPE_FIELDS if st["config"]["model"].get(k) != first.get(k)]
        if diffs:
            raise ConfigError(f"{d} has a different model shape than {dirs[0]} ({', '.join(diffs)})")
    cfg = config_from_dict(states[0]["config"])
    for name in ("tensor", "pipeline", "expert", "context"):
        setattr(cfg.parallel, name, 1)
    cfg.parallel.virtual_pipeline = None
    cfg.parallel.expert_tensor = None
    cfg.model.spec, cfg.model.params_dtype = "local", "fp32"
    initialize_model_parallel(cfg)
    seed_everything(cfg.run.seed)
    model = build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)

    acc: dict = {}
    for d, w in zip(dirs, weights):
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, d)
        model.load_state_dict(loaded["model"], strict=True)
        for name, p in model.state_dict().items():
            if not torch.is_tensor(p) or not p.is_floating_point():
                continue
            acc[name] = acc.get(name, 0) + w * p.detach().float()
    sd = model.state_dict()
    for name, value in acc.items():
        sd[name].copy_(value.to(sd[name].dtype))

    os.makedirs(output, exist_ok=True)
    dist_checkpointing.save({"model": model.sharded_state_dict()}, output)
    layout = dict(states[0].get("layout", {}), tensor=1, pipeline=1, virtual_pipeline=None, expert=1,
                  expert_tensor=1, context=1, world_size=1)
    report = {"inputs": dirs, "weights": weights, "output": output, "tensors": len(acc),
              "steps": [st.get("step") for st in states]}
    trainer_state = {"step": 0, "consumed_tokens": 0, "consumed_samples": 0, "skipped_steps": 0,
                     "layout": layout, "config": states[0]["config"], "averaged": report}
    with open(os.path.join(output, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(trainer_state, f, indent=1)
    return report


def _cmd_average(args) -> int:
    report = average_checkpoints(args.input, args.output, args.weights)
    print(json.dumps(report, indent=1), flush=True)
    return 0


def register_average(sub) -> None:
    p = sub.add_parser("average", help="average the weights of several checkpoints (model-only output)",
                       description=__doc__.split("\n\n")[0] + " Writes a model-only checkpoint usable with "
                       "checkpoint.pretrained=OUTPUT.")
    p.add_argument("--input", nargs="+", required=True,
                   help="checkpoint directories (iter_*) or checkpoints/ roots (their latest)")
    p.add_argument("--output", required=True, help="directory of the averaged checkpoint")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="one weight per input (normalised to sum 1; default uniform)")
    p.set_defaults(func=_cmd_average)
