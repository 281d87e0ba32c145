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


def load_megatron_model(ckpt_dir: str, tp: int, ep: int, spec: str, token_ids=None, image_token_id=None,
                        etp=None):
    """(model, device): the converted checkpoint at TP=tp / EP=ep (expert TP=etp, default tp) in eval mode, fp32.
    Multimodal checkpoints build InternS1Model with `token_ids` (MediaTokenIds; default: `image_token_id` plus
    unused top ids)."""
    from megatron_s1.config.schema import config_from_dict
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.checkpointing import Checkpointer, read_trainer_state
    from megatron_s1.training.distributed import init_distributed, initialize_model_parallel, seed_everything

    env = init_distributed()
    values = read_trainer_state(ckpt_dir)["config"]
    values["parallel"] = {"tensor": tp, "expert": ep, "expert_tensor": etp}
    values["model"].update(params_dtype="fp32", spec=spec, fp8=None, recompute=None)
    cfg = config_from_dict(values)
    initialize_model_parallel(cfg)
    seed_everything(1)
    tconfig = build_transformer_config(cfg)
    if cfg.train.task == "mm_pretrain":
        from megatron_s1.models.interns1.model import InternS1Model, MediaTokenIds

        cfg.timeseries.preset = None  # not part of the HF model
        vocab = cfg.model.vocab_size
        ids = token_ids or MediaTokenIds(vocab - 1, vocab - 2, image_token_id, vocab - 3, vocab - 4, vocab - 5)
        model = InternS1Model(cfg, tconfig, pre_process=True, post_process=True, token_ids=ids).to(env.device)
    else:
        model = build_language_model(cfg, tconfig, pre_process=True, post_process=True).to(env.device)
    Checkpointer(cfg, [types.SimpleNamespace(module=model)], None, None).load(ckpt_dir, model_only=True)
    return model.eval(), env.device


def model_logits(model, device, tokens: torch.Tensor, **media) -> torch.Tensor:
    """Full-vocabulary fp32 logits [b, s, V] on CPU (gathered over TP); `media`: the model's media inputs."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    tokens = tokens.to(device)
    seq = tokens.shape[1]
    positions = torch.arange(seq, device=device).unsqueeze(0).expand_as(tokens)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=device), diagonal=1)[None, None]
    extra = {k: v.to(device) for k, v in media.items() if v is not None}
    with torch.no_grad():
        logits = model(tokens, positions, mask, **extra)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
    return logits.float().cpu()


def megatron_logits(ckpt_dir: str, tokens: torch.Tensor, tp: int, ep: int, spec: str,
                    pixel_values=None, image_token_id=None) -> torch.Tensor:
    model, device = load_megatron_model(ckpt_dir, tp, ep, spec, image_token_id=image_token_id)
    return model_logits(model, device, tokens, pixel_values=pixel_values)


def internvl_config(hf: dict):
    """An Intern-S1 config.json translated to transformers' InternVLConfig (model types renamed)."""
    import transformers

    values = {k: v for k, v in hf.items() if k not in ("architectures", "model_type", "auto_map",
                                                        "transformers_version")}
    vision = {k: v for k, v in hf["vision_config"].items() if k not in ("model_type", "architectures", "auto_map")}
    values["vision_config"] = transformers.InternVLVisionConfig(**vision)
    values["text_config"] = dict(hf["text_config"])
    return transformers.InternVLConfig(**values)


def fuse_hub_experts(state: dict) -> dict:
    """Per-expert hub names (`...mlp.experts.{e}.{gate,up,down}_proj.weight`, as released) -> transformers 5's
    fused `...mlp.experts.gate_up_proj` [E, 2I, H] (cat[gate, up]) and `...mlp.experts.down_proj` [E, H, I]."""
    import re

    pattern = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
    out, experts = {}, {}
    for name, tensor in state.items():
        m = pattern.match(name)
        if m is None:
            out[name] = tensor
        else:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = tensor
    for prefix, by_expert in experts.items():
        order = sorted(by_expert)
        out[prefix + ".gate_up_proj"] = torch.stack([torch.cat([by_expert[e]["gate"], by_expert[e]["up"]])
                                                     for e in order])
        out[prefix + ".down_proj"] = torch.stack([by_expert[e]["down"] for e in order])
    return out


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
    state = fuse_hub_experts(state)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.text_config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"InternVL reference: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if config.text_config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    return model.eval()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def pro_reference_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    """Intern-S1-Pro text backbone forward written from the released modeling code's definitions (transformers
    has no such class): Qwen3-MoE decoder, FoPE (per-KV-head mixing of the kept RoPE frequencies, padded with
    ones to head_dim/2, duplicated halves, rotate-half), grouped router (softmax over all experts, top-(K/G)
    in each of G consecutive groups, renormalised), eager causal attention. fp32, straight from the
    safetensors (no Megatron code involved)."""
    import math
    import os

    from safetensors.torch import load_file

    from megatron_s1.conversion.hf_io import HFCheckpoint, read_hf_config

    cfg = read_hf_config(hf_dir)["text_config"]
    w = {}
    for name in sorted(set(HFCheckpoint(hf_dir).weight_map.values())):
        w.update({k: v.float() for k, v in load_file(os.path.join(hf_dir, name)).items()})
    p = "model.language_model."
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, experts, topk = cfg["rms_norm_eps"], cfg["num_experts"], cfg["num_experts_per_tok"]
    groups = cfg.get("router_n_groups") or 1
    scaling = cfg.get("rope_scaling") or {}
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta"))
    inv_freq = 1.0 / (float(theta) ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if scaling.get("num_inv_freq") is not None:
        inv_freq = inv_freq[:scaling["num_inv_freq"]]
    else:
        inv_freq = inv_freq[inv_freq > 2 * math.pi / cfg["max_position_embeddings"]]
    b, t = tokens.shape
    pos = torch.arange(t, dtype=torch.float32)
    freqs = pos[:, None] * inv_freq.float()[None, :]  # [t, M]
    cos_coef, sin_coef = w[p + "rotary_emb.cos_coef"], w[p + "rotary_emb.sin_coef"]
    if cos_coef.dim() == 3:  # per KV head
        cos = torch.einsum("tm,hmn->htn", freqs.cos(), cos_coef)
        sin = torch.einsum("tm,hmn->htn", freqs.sin(), sin_coef)
    else:
        cos = (freqs.cos() @ cos_coef)[None].expand(kv, -1, -1)
        sin = (freqs.sin() @ sin_coef)[None].expand(kv, -1, -1)
    pad = d // 2 - cos.shape[-1]
    cos = torch.cat([torch.nn.functional.pad(cos, (0, pad), value=1.0)] * 2, dim=-1)  # [kv, t, d]
    sin = torch.cat([torch.nn.functional.pad(sin, (0, pad), value=1.0)] * 2, dim=-1)
    rep = heads // kv
    cos_q, sin_q = cos.repeat_interleave(rep, dim=0), sin.repeat_interleave(rep, dim=0)
    mask = torch.full((t, t), float("-inf")).triu(1)

    x = w[p + "embed_tokens.weight"][tokens]  # [b, t, h]
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}layers.{i}."
        h = _rms(x, w[L + "input_layernorm.weight"], eps)
        q = (h @ w[L + "self_attn.q_proj.weight"].T).view(b, t, heads, d)
        k = (h @ w[L + "self_attn.k_proj.weight"].T).view(b, t, kv, d)
        v = (h @ w[L + "self_attn.v_proj.weight"].T).view(b, t, kv, d)
        q = _rms(q, w[L + "self_attn.q_norm.weight"], eps).transpose(1, 2)  # [b, H, t, d]
        k = _rms(k, w[L + "self_attn.k_norm.weight"], eps).transpose(1, 2)
        v = v.transpose(1, 2)
        q = q * cos_q + _rotate_half(q) * sin_q
        k = k * cos + _rotate_half(k) * sin
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5 + mask, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, t, heads * d)
        x = x + o @ w[L + "self_attn.o_proj.weight"].T
        h = _rms(x, w[L + "post_attention_layernorm.weight"], eps).reshape(b * t, -1)
        probs = torch.softmax(h @ w[L + "mlp.gate.weight"].T, dim=-1)  # [T, E]
        size = experts // groups
        local = probs.view(-1, groups, size).topk(topk // groups, dim=-1).indices
        index = (local + torch.arange(groups)[None, :, None] * size).reshape(-1, topk)
        weight = probs.gather(1, index)
        if cfg.get("norm_topk_prob", False):
            weight = weight / (weight.sum(-1, keepdim=True) + 1e-20)
        out = torch.zeros_like(h)
        for e in range(experts):
            rows, slot = torch.where(index == e)
            if rows.numel() == 0:
                continue
            E = f"{L}mlp.experts.{e}."
            y = h[rows]
            y = (torch.nn.functional.silu(y @ w[E + "gate_proj.weight"].T) * (y @ w[E + "up_proj.weight"].T)) \
                @ w[E + "down_proj.weight"].T
            out.index_add_(0, rows, y * weight[rows, slot, None])
        x = x + out.view(b, t, -1)
    x = _rms(x, w[p + "norm.weight"], eps)
    head = w.get("lm_head.weight", w[p + "embed_tokens.weight"])
    return x @ head.T


def hf_logits(hf_dir: str, tokens: torch.Tensor, pixel_values=None) -> torch.Tensor:
    import transformers

    from megatron_s1.conversion.hf_io import read_hf_config

    if (read_hf_config(hf_dir).get("architectures") or [None])[0] == "InternS1ProForConditionalGeneration":
        with torch.no_grad():
            return pro_reference_logits(hf_dir, tokens)
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
