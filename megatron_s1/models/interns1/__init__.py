"""Intern-S1 composite multimodal model (InternViT + time-series encoder + Qwen3 / Qwen3-MoE backbone)."""
from megatron_s1.models.interns1.model import (InternS1Model, MediaTokenIds, apply_freeze, build_interns1_model,
                                               merge_embeddings, precision_plan)

__all__ = ["InternS1Model", "MediaTokenIds", "apply_freeze", "build_interns1_model", "merge_embeddings",
           "precision_plan"]
