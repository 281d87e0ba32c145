"""InternViT vision tower, pixel-unshuffle projector and InternVL image preprocessing."""
from megatron_s1.models.vision.internvit import (InternViTModel, VisionProjection, build_vision_transformer_config,
                                                 padded_num_heads, pixel_unshuffle)

__all__ = ["InternViTModel", "VisionProjection", "build_vision_transformer_config", "padded_num_heads",
           "pixel_unshuffle"]
