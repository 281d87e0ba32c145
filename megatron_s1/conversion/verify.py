"""Logit parity check: a converted checkpoint in Megatron (any TP/EP, via our Checkpointer) vs. transformers.

    python -m megatron_s1.conversion.verify --hf HF_DIR --ckpt CKPT_DIR                      # TP=1
    torchrun --nproc-per-node 2 -m megatron_s1.conversion.verify --hf HF_DIR --ckpt CKPT_DIR --tp 2
    torchrun --nproc-per-node 2 -m megatron_s1.conversion.verify --hf HF_DIR --ckpt CKPT_DIR --ep 2

Rank 0 prints one JSON line: {"max_abs_diff": ..., "tp": ..., "ep": ...}. Both sides run in fp32 on the same
token ids; the Megatron logits are vocab-parallel under TP and are gathered across the TP group first.
"""
from __future__ import annotations

import argparse
import json
import types

import torch
import torch.distributed as dist


def megatron_logits(ckpt_dir: str, tokens: torch.Tensor, tp: int, ep: int, spec: str) -> torch.Tensor:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_s1.config.schema import config_from_dict
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.checkpointing import Checkpointer, read_trainer_state
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    env = init_distributed()
    values = read_trainer_state(ckpt_dir)["config"]
    values["parallel"] = {"tensor": tp, "expert": ep}
    values["model"].update(params_dtype="fp32", spec=spec, fp8=None, recompute=None)
    cfg = config_from_dict(values)
    initialize_model_parallel(cfg)
    seed_everything(1)
    tconfig = build_transformer_config(cfg)
    model = build_language_model(cfg, tconfig, pre_process=True, post_process=True).to(env.device)
    Checkpointer(cfg, [types.SimpleNamespace(module=model)], None, None).load(ckpt_dir, model_only=True)
    model.eval()
    tokens = tokens.to(env.device)
    seq = tokens.shape[1]
    positions = torch.arange(seq, device=env.device).unsqueeze(0).expand_as(tokens)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=env.device), diagonal=1)[None, None]
    with torch.no_grad():
        logits = model(tokens, positions, mask)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
    return logits.float().cpu()


def hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--spec", default="local", help="local | te | auto")
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from megatron_s1.training.checkpointing import read_trainer_state

    vocab = read_trainer_state(args.ckpt)["config"]["model"]["vocab_size"]
    gen = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, vocab, (args.batch, args.seq), generator=gen)
    # transformers first: our CPU bridges (megatron_s1.compat.cpu) replace torch.cuda.Stream, which
    # transformers' import-time annotations use.
    ref = hf_logits(args.hf, tokens)
    got = megatron_logits(args.ckpt, tokens, args.tp, args.ep, args.spec)
    if dist.get_rank() == 0:
        diff = (got - ref).abs().max().item()
        print(json.dumps({"max_abs_diff": diff, "tp": args.tp, "ep": args.ep, "shape": list(ref.shape),
                          "logit_scale": ref.abs().max().item()}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
