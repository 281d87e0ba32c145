"""Multimodal RL prompts: text with images, encoded for InternS1Model.

A prompt record may carry ``"images": ["a.png", ...]`` (paths relative to the prompt file's folder). Each
``<image>`` in the prompt text marks where the next image goes; without markers the images precede the text.
Every image becomes ``<img>`` + tiles x tokens_per_tile ``<IMG_CONTEXT>`` + ``</img>`` (the layout of
multimodal CPT, megatron_s1/data/multimodal/dataset.py) and its tiles are the pixel values that
InternS1Model merges at the ``<IMG_CONTEXT>`` positions.
"""
from __future__ import annotations

from typing import Optional

import torch

IMAGE_MARKER = "<image>"


class PromptEncoder:
    """record -> (prompt token ids, pixel tiles [n, 3, S, S] or None)."""

    def __init__(self, tokenizer, media=None, vision=None):
        self.tok, self.media, self.vision = tokenizer, media, vision

    def __call__(self, rec: dict) -> tuple[list[int], Optional[torch.Tensor]]:
        images = rec.get("images") or []
        if not images:
            return self.tok.encode(rec["prompt"]), None
        if self.vision is None or self.media is None:
            raise ValueError("a prompt has images but the model has no vision tower; set vision.preset")
        from PIL import Image

        from megatron_s1.models.vision.preprocess import dynamic_tiles, image_prompt_ids, tokens_per_tile

        v = self.vision
        parts = rec["prompt"].split(IMAGE_MARKER)
        if len(parts) == 1:
            parts = [""] * len(images) + parts
        per_tile = tokens_per_tile(v.image_size, v.patch_size, v.downsample_ratio)
        ids, tiles = [], []
        for i, text in enumerate(parts):
            if text:
                ids += self.tok.encode(text)
            if i < len(images):
                with Image.open(images[i]) as im:
                    t = dynamic_tiles(im, v.image_size, v.min_tiles, v.max_tiles, v.use_thumbnail)
                ids += image_prompt_ids(t.shape[0], per_tile, self.media.img_start, self.media.img_context,
                                        self.media.img_end)
                tiles.append(t)
        return ids, torch.cat(tiles)


def batch_pixels(per_row: Optional[list], rows) -> Optional[torch.Tensor]:
    """Pixel values of a batch of rows, in row order (InternS1Model fills <IMG_CONTEXT> rows row-major)."""
    if per_row is None:
        return None
    tiles = [per_row[i] for i in rows if per_row[i] is not None]
    return torch.cat(tiles) if tiles else None
