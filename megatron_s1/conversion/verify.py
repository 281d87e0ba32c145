"""Logit parity check: a converted checkpoint in Megatron (any TP/EP, via our Checkpointer) vs. transformers.

    python -m megatron_s1.conversion.verify --hf HF_DIR --ckpt CKPT_DIR                      # TP=1
    torchrun --nproc-per-node 2 -m megatron_s1.conversion.verify --hf HF_DIR --ckpt CKPT_DIR --tp 2
    torchrun --nproc-per-node 2 -m megatron_s1.conversion.verify --hf HF_DIR --ckpt CKPT_DIR --ep 2

Rank 0 prints one JSON line: {"max_abs_diff": ..., "tp": ..., "ep": ...}. Both sides run in fp32 on the same
token ids; the Megatron logits are vocab-parallel under TP and are gathered across the TP group first.

InternS1 (`InternS1ForConditionalGeneration`) checkpoints are compared with images: each sequence carries one
random image tile whose placeholder tokens (`image_token_id`) sit in the middle. transformers has no InternS1
classes; Intern-S1's modeling is transformers' InternVL (same module and weight names, same forward) with
a Qwen3 / Qwen3-MoE text model, so the reference is `InternVLForConditionalGeneration` built from the
translated config (`internvl_reference`).
"""
from __future__ import annotations

import argparse
import json
import types

import torch
import torch.distributed as dist


def megatron_logits(ckpt_dir: str, tokens: torch.Tensor, tp: int, ep: int, spec: str,
                    pixel_values=None, image_token_id=None) -> torch.Tensor:
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
    if cfg.train.task == "mm_pretrain":
        from megatron_s1.models.interns1.model import InternS1Model, MediaTokenIds

        cfg.timeseries.preset = None  # not part of the HF model
        vocab = cfg.model.vocab_size
        ids = MediaTokenIds(vocab - 1, vocab - 2, image_token_id, vocab - 3, vocab - 4, vocab - 5)
        model = InternS1Model(cfg, tconfig, pre_process=True, post_process=True, token_ids=ids).to(env.device)
    else:
        model = build_language_model(cfg, tconfig, pre_process=True, post_process=True).to(env.device)
    Checkpointer(cfg, [types.SimpleNamespace(module=model)], None, None).load(ckpt_dir, model_only=True)
    model.eval()
    tokens = tokens.to(env.device)
    seq = tokens.shape[1]
    positions = torch.arange(seq, device=env.device).unsqueeze(0).expand_as(tokens)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=env.device), diagonal=1)[None, None]
    extra = {}
    if pixel_values is not None:
        extra["pixel_values"] = pixel_values.to(env.device)
    with torch.no_grad():
        logits = model(tokens, positions, mask, **extra)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
    return logits.float().cpu()


def internvl_config(hf: dict):
    """An Intern-S1 config.json translated to transformers' InternVLConfig (model types renamed)."""
    import transformers

    values = {k: v for k, v in hf.items() if k not in ("architectures", "model_type", "auto_map",
                                                        "transformers_version")}
    vision = {k: v for k, v in hf["vision_config"].items() if k not in ("model_type", "architectures", "auto_map")}
    values["vision_config"] = transformers.InternVLVisionConfig(**vision)
    values["text_config"] = dict(hf["text_config"])
    return transformers.InternVLConfig(**values)


def internvl_reference(hf_dir: str):
    """An InternS1 HF directory loaded into transformers' InternVLForConditionalGeneration (fp32, eager)."""
    import os

    import transformers
    from safetensors.torch import load_file

    from megatron_s1.conversion.hf_io import HFCheckpoint, read_hf_config

    config = internvl_config(read_hf_config(hf_dir))
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    model = transformers.InternVLForConditionalGeneration(config).float()
    state = {}
    for name in sorted(set(HFCheckpoint(hf_dir).weight_map.values())):
        state.update(load_file(os.path.join(hf_dir, name)))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.text_config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"InternVL reference: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if config.text_config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    return model.eval()


def hf_logits(hf_dir: str, tokens: torch.Tensor, pixel_values=None) -> torch.Tensor:
    import transformers

    if pixel_values is not None:
        model = internvl_reference(hf_dir)
        with torch.no_grad():
            return model(input_ids=tokens, pixel_values=pixel_values).logits.float()
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32,
                                                              attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(input_ids=tokens).logits.float()


def image_inputs(hf: dict, vision: dict, tokens: torch.Tensor, gen: torch.Generator):
    """One random tile per sequence; its placeholders (image_token_id) overwrite the middle of each row."""
    per_tile = int((vision["image_size"] // vision["patch_size"]) ** 2 * vision["downsample_ratio"] ** 2)
    batch, seq = tokens.shape
    if seq < per_tile + 2:
        raise SystemExit(f"--seq must be at least {per_tile + 2} for {per_tile} image tokens")
    start = (seq - per_tile) // 2
    tokens = tokens.clone()
    tokens[:, start:start + per_tile] = hf["image_token_id"]
    size = vision["image_size"]
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    return tokens, pixels


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

    from megatron_s1.conversion.hf_io import read_hf_config
    from megatron_s1.training.checkpointing import read_trainer_state

    saved = read_trainer_state(args.ckpt)["config"]
    vocab = saved["model"]["vocab_size"]
    gen = torch.Generator().manual_seed(args.seed)
    hf = read_hf_config(args.hf)
    multimodal = saved["train"]["task"] == "mm_pretrain"
    # Keep random text ids clear of the media ids (the image token and the top ids used as unused media ids).
    high = min(vocab - 8, hf.get("image_token_id", vocab)) if multimodal else vocab
    tokens = torch.randint(0, high, (args.batch, args.seq), generator=gen)
    pixels = None
    if multimodal:
        tokens, pixels = image_inputs(hf, saved["vision"], tokens, gen)
    # transformers first: our CPU bridges (megatron_s1.compat.cpu) replace torch.cuda.Stream, which
    # transformers' import-time annotations use.
    ref = hf_logits(args.hf, tokens, pixels)
    got = megatron_logits(args.ckpt, tokens, args.tp, args.ep, args.spec, pixels, hf.get("image_token_id"))
    if dist.get_rank() == 0:
        diff = (got - ref).abs().max().item()
        print(json.dumps({"max_abs_diff": diff, "tp": args.tp, "ep": args.ep, "shape": list(ref.shape),
                          "images": 0 if pixels is None else int(pixels.shape[0]),
                          "logit_scale": ref.abs().max().item()}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
