"""Multimodal RL prompts: text with images, encoded for InternS1Model.

A prompt record may carry ``"images": ["a.png", ...]`` (paths relative to the prompt file's folder). Each
``<image>`` in the prompt text marks where the next image goes; without markers the images precede the text.
Every image becomes the placeholder ids of multimodal CPT (megatron_s1/data/multimodal/vision.py):
``<img>`` + tiles x tokens_per_tile ``<IMG_CONTEXT>`` + ``</img>`` for vision.arch=internvit,
``<|vision_start|>`` + patches/4 x ``<|image_pad|>`` + ``<|vision_end|>`` for vision.arch=pro; its encoder
inputs (tiles, or Pro patches with their grid) are what InternS1Model merges at the placeholders.
"""
from __future__ import annotations

from typing import Optional

IMAGE_MARKER = "<image>"


class PromptEncoder:
    """record -> (prompt token ids, image inputs: a dict of InternS1Model keyword arguments, or None)."""

    def __init__(self, tokenizer, media=None, vision=None):
        from megatron_s1.data.multimodal.vision import vision_media

        self.tok, self.media = tokenizer, media
        self.visual = vision_media(vision, media, tokenizer.encode) if media is not None else None

    def __call__(self, rec: dict) -> tuple[list[int], Optional[dict]]:
        images = rec.get("images") or []
        if not images:
            return self.tok.encode(rec["prompt"]), None
        if self.visual is None:
            raise ValueError("a prompt has images but the model has no vision tower; set vision.preset")
        parts = rec["prompt"].split(IMAGE_MARKER)
        if len(parts) == 1:
            parts = [""] * len(images) + parts
        ids = []
        for i, text in enumerate(parts):
            if text:
                ids += self.tok.encode(text)
            if i < len(images):
                ids += self.visual.prompt_ids("image", images[i])
        return ids, self.visual.load([("image", path) for path in images])


def batch_pixels(per_row: Optional[list], rows) -> Optional[dict]:
    """Image inputs of a batch of rows, in row order (InternS1Model fills the placeholders row-major)."""
    from megatron_s1.data.multimodal.vision import collate_vision

    if per_row is None:
        return None
    present = [per_row[i] for i in rows if per_row[i] is not None]
    return collate_vision(present) if present else None
