"""The start-up summary block printed once by rank 0 before the first step."""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_s1.models.specs import resolve_spec_kind


def _is_routed_expert(name: str) -> bool:
    return ".experts." in name and ".shared_experts." not in name


def parameter_counts(chunks: list, topk: int, num_experts: int | None, device) -> tuple[int, int]:
    """(total, active per token) parameters of the whole model, however it is split over ranks.

    Each rank counts a parameter only where it is the first replica: tensor-parallel copies of an unsplit
    weight, data- and context-parallel replicas and the tied output copy on the last pipeline stage are
    skipped, then the counts are summed over all ranks. Active = everything but the routed experts, plus
    topk / num_experts of the routed experts (a token visits top-k of them).
    """
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    dp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    counts = torch.zeros(2, dtype=torch.float64, device=device)  # [dense, routed experts]
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            if getattr(param, "shared", False) and getattr(param, "shared_embedding", False):
                continue  # last-stage copy of the tied embedding
            split = getattr(param, "tensor_model_parallel", False)
            if _is_routed_expert(name):
                first = parallel_state.get_expert_data_parallel_rank() == 0 and (
                    split or parallel_state.get_expert_tensor_parallel_rank() == 0)
                counts[1] += param.numel() if first else 0
            elif dp_rank == 0 and (split or tp_rank == 0):
                counts[0] += param.numel()
    dist.all_reduce(counts)
    dense, experts = (int(x) for x in counts.tolist())
    active = dense + (experts * topk // num_experts if num_experts else experts)
    return dense + experts, active


def human(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def dataset_size(ds) -> str:
    if ds is None:
        return "none"
    if hasattr(ds, "documents"):  # packed data: sequences of whole samples
        return f"{len(ds.documents)} packs"
    return f"{len(ds)} sequences" if hasattr(ds, "__len__") else "streamed"


def startup_summary(trainer) -> str:
    """Model size, layout, spec, precision, data and batch of a Trainer whose datasets are built."""
    cfg, m = trainer.cfg, trainer.cfg.model
    total, active = parameter_counts(trainer.model, m.moe_router_topk, m.num_moe_experts, trainer.env.device)
    p = cfg.parallel
    kind = f"MoE {m.num_moe_experts} experts top-{m.moe_router_topk}" if m.num_moe_experts else "dense"
    precision = str(trainer.tconfig.params_dtype).replace("torch.", "")
    if m.fp8:
        precision += f" + FP8 {m.fp8} ({m.fp8_modules})"
    schedule = trainer.batch_schedule
    stages = " -> ".join(f"{s.global_batch_tokens} (from {s.start_tokens})" if s.start_tokens else
                         str(s.global_batch_tokens) for s in schedule.stages)
    lines = [
        f"model     {m.preset or 'custom'}: {m.num_layers} layers, hidden {m.hidden_size}, {kind}; parameters "
        f"{human(total)} total, {human(active)} active per token",
        f"layout    TP {p.tensor} x PP {p.pipeline} x CP {p.context}, EP {p.expert}, DP {trainer.dp_size} "
        f"({trainer.env.world_size} processes, {trainer.env.device.type})",
        f"spec      {resolve_spec_kind(m.spec)}, precision {precision}",
        f"data      task {cfg.train.task}: train {dataset_size(trainer.train_ds)}, valid "
        f"{dataset_size(trainer.valid_ds)}; seq_length {cfg.data.seq_length}, micro-batch {cfg.data.micro_batch_size}",
        f"batch     tokens per step {stages}; {cfg.train.steps} steps = {trainer.total_tokens} tokens",
        f"run dir   {cfg.run.dir}",
    ]
    return "\n".join(lines)
