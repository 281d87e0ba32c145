"""Intern-S1-Pro vision tower (Qwen3-VL style ViT + patch merger), its HF mapping and its preprocessing."""
from megatron_s1.models.pro.vision.model import ProPatchMerger, ProVisionModel, build_pro_vision_config

__all__ = ["ProPatchMerger", "ProVisionModel", "build_pro_vision_config"]
