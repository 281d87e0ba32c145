"""Intern-S1-Pro vision tower (Qwen3-VL style ViT + patch merger), its HF mapping and its preprocessing."""
from megatron_s1.models.pro.vision.model import ProPatchMerger, ProVisionModel, build_pro_vision_config
from megatron_s1.models.pro.vision.preprocess import ProImageProcessor

__all__ = ["ProImageProcessor", "ProPatchMerger", "ProVisionModel", "build_pro_vision_config"]
