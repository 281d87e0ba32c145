"""Expert expansion (Intern-S1-Pro Fig. 2): grow an E-expert MoE checkpoint to G groups x S experts.

Each original expert is copied r = G*S/E times (FFN weights and its router row). The copies are laid out
so that, for the experts that most often form a token's (top-1, top-2) pair, the top-1 sits in some groups
and the top-2 in the others: with the grouped router (top-1 per group), every group then contains the
token's former top-1 or top-2, and the expanded layer reproduces the original top-1/top-2 mixture
(exactly, for top-2 originals with 2r = G). Usage statistics come from a short routing pass over data.

Plan construction (`expansion_plan`): greedily pair experts by descending (top-1, top-2) co-occurrence;
walk the pairs (then any unpaired expert) and give each expert r consecutive slots of a circular sequence
whose slot q belongs to group q mod G. A pair therefore occupies 2r consecutive groups (all G groups when
2r >= G) and every group receives exactly S experts.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Optional

import torch

EXPERT_KEY = re.compile(r"^(.*\.mlp\.experts\.local_experts\.)(\d+)(\..+)$")
GROUPED_GEMM_KEY = re.compile(r"^(.*\.mlp\.experts\.linear_fc[12]\.weight)(\d+)$")
ROUTER_KEY = re.compile(r"^(.*\.mlp\.router\.weight)$")


def expansion_plan(pair_counts: torch.Tensor, num_groups: int, experts_per_group: int) -> list[int]:
    """Source expert of every new expert (new index = group * S + slot); pair_counts[a, b] = #(top1=a, top2=b)."""
    num_experts = pair_counts.shape[0]
    total = num_groups * experts_per_group
    if total % num_experts:
        raise ValueError(f"G*S={total} must be a multiple of the original {num_experts} experts")
    copies = total // num_experts
    sym = (pair_counts + pair_counts.T).float()
    order = sorted(((float(sym[a, b]), a, b) for a in range(num_experts) for b in range(a + 1, num_experts)),
                   key=lambda t: (-t[0], t[1], t[2]))
    paired: set[int] = set()
    units: list[list[int]] = []
    for _, a, b in order:
        if a not in paired and b not in paired:
            units.append([a, b])
            paired.update((a, b))
    units += [[e] for e in range(num_experts) if e not in paired]
    groups: list[list[int]] = [[] for _ in range(num_groups)]
    slot = 0
    for unit in units:
        for expert in unit:
            for _ in range(copies):
                groups[slot % num_groups].append(expert)
                slot += 1
    assert all(len(g) == experts_per_group for g in groups)
    return [e for g in groups for e in g]


def pair_coverage(pair_counts: torch.Tensor, plan: list[int], num_groups: int) -> float:
    """Fraction of tokens whose former top-1 or top-2 expert is present in every group."""
    size = len(plan) // num_groups
    members = [set(plan[g * size:(g + 1) * size]) for g in range(num_groups)]
    covered = total = 0.0
    for a, b in torch.nonzero(pair_counts).tolist():
        n = float(pair_counts[a, b])
        total += n
        if all(a in m or b in m for m in members):
            covered += n
    return covered / total if total else 0.0


def expand_state_dict(state: dict, plans: dict[str, list[int]]) -> dict:
    """Copy a (single-process) model state dict, expanding experts and router rows by layer prefix plans.

    `plans` maps the layer prefix 'decoder.layers.<i>.mlp.' to the source-expert list of that layer.
    """
    out = {}
    for key, value in state.items():
        if EXPERT_KEY.match(key) or GROUPED_GEMM_KEY.match(key):
            continue
        m = ROUTER_KEY.match(key)
        if m:
            prefix = key[:-len("router.weight")]
            out[key] = value[torch.tensor(plans[prefix])].clone()
        else:
            out[key] = value
    for key, value in state.items():
        m = EXPERT_KEY.match(key)
        if m:
            prefix = m.group(1)[:-len("experts.local_experts.")]
            for new, src in enumerate(plans[prefix]):
                if src == int(m.group(2)):
                    out[f"{m.group(1)}{new}{m.group(3)}"] = value.clone() if torch.is_tensor(value) else value
            continue
        m = GROUPED_GEMM_KEY.match(key)
        if m:
            prefix = m.group(1).split("experts.")[0]
            for new, src in enumerate(plans[prefix]):
                if src == int(m.group(2)):
                    out[f"{m.group(1)}{new}"] = value.clone() if torch.is_tensor(value) else value
    return out


def _token_batches(prefix: str, seq_length: int, batch: int, num_batches: int) -> list[torch.Tensor]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(prefix)
    need = seq_length * batch * num_batches
    chunks, have = [], 0
    for i in range(len(ds)):
        doc = torch.from_numpy(ds[i].astype("int64"))
        chunks.append(doc)
        have += doc.numel()
        if have >= need:
            break
    tokens = torch.cat(chunks)
    if tokens.numel() < need:
        raise ValueError(f"{prefix} has {tokens.numel()} tokens, fewer than the {need} the routing pass needs")
    return list(tokens[:need].view(num_batches, batch, seq_length))


def _build(cfg):
    from megatron_s1.models.language import build_language_model, build_transformer_config
    from megatron_s1.training.distributed import initialize_model_parallel, seed_everything

    initialize_model_parallel(cfg)
    seed_everything(cfg.run.seed)
    model = build_language_model(cfg, build_transformer_config(cfg), pre_process=True, post_process=True)
    return model.eval()


def _forward(model, tokens: torch.Tensor) -> torch.Tensor:
    b, s = tokens.shape
    positions = torch.arange(s).expand(b, s)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
    with torch.no_grad():
        return model(tokens, positions, mask).float()


def expand_checkpoint(src: str, out: str, num_groups: int, experts_per_group: int, topk: Optional[int] = None,
                      data: Optional[str] = None, num_batches: int = 4, micro_batch_size: int = 4,
                      seq_length: Optional[int] = None) -> dict:
    """Expand checkpoint `src` into a model-only checkpoint directory `out`; returns the report."""
    from megatron.core import dist_checkpointing

    from megatron_s1.config.schema import ConfigError, config_from_dict
    from megatron_s1.training.checkpointing import STATE_FILE, read_trainer_state, resolve_checkpoint_dir
    from megatron_s1.training.distributed import init_distributed

    init_distributed()
    src = resolve_checkpoint_dir(src)
    state = read_trainer_state(src)
    cfg = config_from_dict(state["config"])
    m = cfg.model
    if m.num_moe_experts is None:
        raise ConfigError(f"{src} is a dense model; expand-experts needs an MoE checkpoint")
    for name in ("tensor", "pipeline", "expert", "context"):  # one CPU process sees the whole model
        setattr(cfg.parallel, name, 1)
    cfg.parallel.virtual_pipeline = None
    cfg.parallel.expert_tensor = None
    m.spec, m.params_dtype, m.moe_experts = "local", "fp32", "auto"  # one state-dict entry per expert
    topk = topk or (m.moe_router_topk if m.moe_router_topk % num_groups == 0 else num_groups)

    model = _build(cfg)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, src)
    model.load_state_dict(loaded["model"], strict=True)

    E = m.num_moe_experts
    pairs: dict[str, torch.Tensor] = {}
    hooks = []
    for layer in model.decoder.layers:
        prefix = f"decoder.layers.{layer.layer_number - 1}.mlp."
        pairs[prefix] = torch.zeros(E, E, dtype=torch.long)

        def hook(_router, _inputs, out, prefix=prefix):
            top2 = out[0].detach().float().topk(2, dim=-1).indices  # the former top-1 / top-2 of each token
            pairs[prefix].index_put_((top2[:, 0], top2[:, 1]), torch.ones(len(top2), dtype=torch.long),
                                     accumulate=True)

        hooks.append(layer.mlp.router.register_forward_hook(hook))
    if data is None:
        if not cfg.data.blend:
            raise ConfigError("the checkpoint's config has no data.blend; pass --data PREFIX for the routing pass")
        last = cfg.data.blend[-1]
        data = str(last[-1] if isinstance(last, (list, tuple)) else last)
    batches = _token_batches(data, seq_length or cfg.data.seq_length, micro_batch_size, num_batches)
    ref = [_forward(model, b) for b in batches]
    for h in hooks:
        h.remove()
    plans = {p: expansion_plan(c, num_groups, experts_per_group) for p, c in pairs.items()}
    coverage = {p: round(pair_coverage(pairs[p], plans[p], num_groups), 4) for p in pairs}
    new_state = expand_state_dict(model.state_dict(), plans)

    new_cfg = copy.deepcopy(cfg)
    new_cfg.model.num_moe_experts = num_groups * experts_per_group
    new_cfg.model.moe_router_topk = topk
    new_cfg.model.moe_router_groups = num_groups
    del model
    expanded = _build(new_cfg)
    expanded.load_state_dict(new_state, strict=True)
    got = [_forward(expanded, b) for b in batches]

    diff = torch.cat([(g - r).abs().flatten() for g, r in zip(got, ref)])
    norm = torch.cat([r.abs().flatten() for r in ref])
    kl, loss_ref, loss_new, agree = 0.0, 0.0, 0.0, 0.0
    for b, g, r in zip(batches, got, ref):
        lr, lg = r.log_softmax(-1), g.log_softmax(-1)
        kl += float((lr.exp() * (lr - lg)).sum(-1).mean()) / len(batches)
        labels = b[:, 1:]
        loss_ref += float(-lr[:, :-1].gather(-1, labels[..., None]).mean()) / len(batches)
        loss_new += float(-lg[:, :-1].gather(-1, labels[..., None]).mean()) / len(batches)
        agree += float((r.argmax(-1) == g.argmax(-1)).float().mean()) / len(batches)
    report = {
        "source": src, "output": out, "experts": [E, new_cfg.model.num_moe_experts], "groups": num_groups,
        "topk": [m.moe_router_topk, topk], "tokens": sum(b.numel() for b in batches),
        "pair_coverage": coverage,
        "logits_max_abs_diff": float(diff.max()), "logits_mean_abs_diff": float(diff.mean()),
        "logits_rel_diff": float(diff.norm() / norm.norm()), "kl_orig_to_expanded": kl,
        "loss_orig": loss_ref, "loss_expanded": loss_new, "argmax_agreement": agree,
        "plans": {p: plans[p] for p in plans},
    }

    # Model-only checkpoint in the training format (load it with checkpoint.pretrained=<out>).
    os.makedirs(out, exist_ok=True)
    dist_checkpointing.save({"model": expanded.sharded_state_dict()}, out)
    saved_cfg = config_from_dict(state["config"])  # keep the source's layout and data settings
    saved_cfg.model.num_moe_experts = new_cfg.model.num_moe_experts
    saved_cfg.model.moe_router_topk = topk
    saved_cfg.model.moe_router_groups = num_groups
    layout = dict(state.get("layout", {}), tensor=1, pipeline=1, virtual_pipeline=None, expert=1, expert_tensor=1,
                  context=1, world_size=1)
    trainer_state = {"step": 0, "consumed_tokens": 0, "consumed_samples": 0, "skipped_steps": 0,
                     "layout": layout, "config": saved_cfg.to_dict(), "expansion": report}
    with open(os.path.join(out, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(trainer_state, f, indent=1)
    if not math.isfinite(report["logits_max_abs_diff"]):
        raise RuntimeError("expanded model produced non-finite logits")
    return report
