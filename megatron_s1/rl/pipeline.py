"""Every forward of the RL step (prefill, each decode step, the log-prob passes, the policy updates) as one
micro-batch of Megatron-Core's pipeline schedule, so the same code runs at any pipeline-parallel size.

The RL step's batch shapes change from call to call (prompt lengths, one token per decode step), so each call
runs the schedule with ``num_microbatches=1`` and that call's ``[seq, rows]`` shape: stage k receives stage k-1's
hidden states, the last stage holds the logits (and the loss, whose backward the schedule pipelines back).
Results therefore live on the last stage; `from_last_stage` hands them to the other stages of the pipeline
group, which need the sampled tokens to feed the next decode step and the log-probs for the update's metrics.
With one pipeline stage the schedule is Megatron-Core's no-pipelining forward (and backward).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.distributed as dist


def pipeline_size() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_pipeline_model_parallel_world_size()


def is_last_stage() -> bool:
    from megatron.core import parallel_state

    return parallel_state.is_pipeline_last_stage(ignore_virtual=True)


def run_microbatch(model, forward: Callable[[Any], torch.Tensor], seq_length: int, rows: int,
                   loss_func: Optional[Callable] = None, forward_only: bool = True) -> Optional[Any]:
    """Run ``forward(model)`` (this stage's model call; its input from the previous stage is set by the schedule)
    on every pipeline stage.

    ``loss_func`` None: returns the last stage's output (the logits), None on other stages. Otherwise
    ``loss_func(output) -> (loss, num_tokens, dict)`` runs on the last stage (Megatron-Core's loss-function
    contract; ``calculate_per_token_loss`` must be on so the loss is taken as it is) and the dict is returned there;
    ``forward_only=False`` back-propagates the loss through every stage.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def forward_step(_data_iterator, stage_model):
        return forward(stage_model), loss_func

    out = get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=model,
                                      num_microbatches=1, seq_length=seq_length, micro_batch_size=rows,
                                      forward_only=forward_only)
    return out[0] if out else None


def from_last_stage(tensor: Optional[torch.Tensor], shape, dtype: torch.dtype, device) -> torch.Tensor:
    """``tensor`` of the last pipeline stage on every stage of this rank's pipeline group (``shape`` / ``dtype``:
    what the last stage holds; the other stages pass None)."""
    if pipeline_size() == 1:
        return tensor
    from megatron.core import parallel_state

    if is_last_stage():
        buf = tensor.to(device=device, dtype=dtype).contiguous()
    else:
        buf = torch.empty(tuple(shape), dtype=dtype, device=device)
    dist.broadcast(buf, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return buf


def object_from_last_stage(obj):
    """A small picklable object of the last pipeline stage on every stage of this rank's pipeline group."""
    if pipeline_size() == 1:
        return obj
    from megatron.core import parallel_state

    box = [obj if is_last_stage() else None]
    dist.broadcast_object_list(box, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                               group=parallel_state.get_pipeline_model_parallel_group())
    return box[0]


def sum_over_stages(values: list, device) -> list:
    """Element-wise sum of a small list of numbers over the stages of this rank's pipeline group (quantities
    every stage counts over its own layers, e.g. routing decisions)."""
    if pipeline_size() == 1:
        return list(values)
    from megatron.core import parallel_state

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=parallel_state.get_pipeline_model_parallel_group())
    return t.cpu().tolist()
