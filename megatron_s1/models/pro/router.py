"""`ProRouter`: Megatron's TopKRouter with the Intern-S1-Pro grouped selection and STE gradient.

Injected through the layer spec (`MoESubmodules.router`, see `megatron_s1.models.pro.spec`), so nothing in
Megatron is patched. The gating linear, z-loss, auxiliary losses, routing replay (RL) and the token
dispatchers are Megatron's; only the top-K selection and the weights differ (formulas in `routing.py`).

Routing statistics: with MEGATRON_S1_ROUTING_STATS=<dir> every process accumulates the token-expert
assignments each of its routers makes (per layer, per expert) and writes <dir>/rank_<r>.json at exit.
"""
from __future__ import annotations

import atexit
import json
import os
from typing import Optional

import torch
from megatron.core.transformer.moe.moe_utils import compute_routing_scores_for_aux_loss
from megatron.core.transformer.moe.router import TopKRouter

from megatron_s1.models.pro.routing import grouped_topk, ste_routing_weights, topk_weights

STATS_ENV = "MEGATRON_S1_ROUTING_STATS"
_STATS: dict[int, torch.Tensor] = {}


def _write_stats() -> None:
    out = os.environ.get(STATS_ENV)
    if not out or not _STATS:
        return
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank_{rank:05d}.json"), "w", encoding="utf-8") as f:
        json.dump({str(k): v.tolist() for k, v in sorted(_STATS.items())}, f)


atexit.register(_write_stats)


class ProRouter(TopKRouter):
    """Top-K router with optional grouped selection (Pro §2.1) and straight-through gradient (Pro Eq. 2-3).

    Args (besides Megatron's):
        num_groups: G; None or 1 = plain top-K over all experts.
        ste: route the gradient through the dense softmax(z / ste_temperature).
        ste_temperature: tau.
    """

    def __init__(self, config, pg_collection=None, is_mtp_layer: bool = False, *, num_groups: Optional[int] = None,
                 ste: bool = False, ste_temperature: float = 1.0) -> None:
        super().__init__(config=config, pg_collection=pg_collection, is_mtp_layer=is_mtp_layer)
        self.num_groups = num_groups or 1
        self.ste = ste
        self.ste_temperature = ste_temperature
        if self.num_experts % self.num_groups or self.topk % self.num_groups:
            raise ValueError(f"moe_router_groups={self.num_groups} must divide num_moe_experts={self.num_experts} "
                             f"and moe_router_topk={self.topk}")
        if config.moe_router_score_function != "softmax":
            raise ValueError("the Pro router uses softmax scores (moe_router_score_function=softmax)")
        if config.moe_expert_capacity_factor is not None:
            raise ValueError("the Pro router does not drop tokens (moe_expert_capacity_factor must be None)")
        if config.moe_router_enable_expert_bias or self.routing_type in ("sinkhorn", "quantile_balancing"):
            raise ValueError("the Pro router supports aux-loss balancing (or none), not expert bias/sinkhorn/QB")

    def _select(self, scores: torch.Tensor, topk: int, num_groups=None, group_topk=None):
        return grouped_topk(scores, topk, self.num_groups)

    def pro_routing(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, E] logits -> (sparse probs [T, E], routing map [T, E]); the formulas live in routing.py."""
        scores = logits.float()
        if self.router_replay is not None:  # RL routing replay records / replays these indices
            _, indices = self.router_replay.get_replay_topk(scores, self.topk, self.num_groups, None, self._select)
        else:
            _, indices = self._select(scores, self.topk)
        values = topk_weights(logits, indices, norm_topk_prob=not self.config.moe_router_pre_softmax)
        if self.config.moe_router_topk_scaling_factor:
            values = values * self.config.moe_router_topk_scaling_factor
        if self.ste:
            values = ste_routing_weights(logits, indices, values, self.ste_temperature)
        values = values.type_as(logits)
        probs = torch.zeros_like(logits).scatter(1, indices, values)
        routing_map = torch.zeros_like(logits, dtype=torch.bool).scatter(1, indices, True)
        return probs, routing_map

    def routing(self, logits: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        seq_length, bsz = logits.shape[:2]
        logits = logits.view(-1, self.config.num_moe_experts)
        if padding_mask is not None:
            padding_mask = padding_mask.reshape(-1)
        logits = self.apply_z_loss(logits, padding_mask=padding_mask)
        probs, routing_map = self.pro_routing(logits)
        if self.training and torch.is_grad_enabled() and self.is_aux_loss_enabled():
            map_for_aux, scores_for_aux = compute_routing_scores_for_aux_loss(
                logits, self.topk, self.score_function, fused=False, padding_mask=padding_mask)
            masked = padding_mask is not None
            probs = self._apply_aux_loss(probs, scores_for_aux, map_for_aux, with_padding_mask=masked)
            probs = self._apply_seq_aux_loss(probs, scores_for_aux, map_for_aux, seq_length, bsz,
                                             with_padding_mask=masked)
            probs = self._apply_global_aux_loss(probs, scores_for_aux, map_for_aux, with_padding_mask=masked)
        if os.environ.get(STATS_ENV) and self.layer_number is not None:
            counts = routing_map.sum(dim=0).detach().to("cpu", torch.long)
            prev = _STATS.get(self.layer_number)
            _STATS[self.layer_number] = counts if prev is None else prev + counts
        return probs, routing_map
