"""Images (and, for vision.arch=pro, videos) of multimodal samples, per vision tower.

One object per vision.arch gives the two things every multimodal pipeline (CPT jsonl, SFT turns, RL prompts)
needs: the placeholder ids of an item, from its file header alone (layouts and packing never decode pixels),
and the encoder inputs of a list of items, in token order, as keyword arguments of `InternS1Model`:

- `TiledImages` (internvit, Intern-S1): InternVL dynamic tiles (`models/vision/preprocess.py`) ->
  `pixel_values` [tiles, 3, S, S];
- `ProMedia` (pro, Intern-S1-Pro): the release's processors (`models/pro/vision/preprocess.py`) ->
  `pixel_values` + `image_grid_thw` for images, `pixel_values_videos` + `video_grid_thw` for videos.

A video item is `{"video": [frame paths] | "clip.npy", "fps": 24}` (a uint8 [N, H, W, 3] array or image
files, the clip's own frame rate; 24 when not given, as the release assumes); its frames are sampled as the
release's video processor does.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from megatron_s1.config.schema import ConfigError

# InternS1Model keyword arguments that carry media (besides the time series).
VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def load_image(path: str):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im


class TiledImages:
    """vision.arch=internvit: `<img>` + tiles x tokens_per_tile `<IMG_CONTEXT>` + `</img>` per image."""

    def __init__(self, vision, ids):
        from megatron_s1.models.vision.preprocess import tokens_per_tile

        self.v, self.ids = vision, ids
        self.per_tile = tokens_per_tile(vision.image_size, vision.patch_size, vision.downsample_ratio)

    def prompt_ids(self, kind: str, item) -> list[int]:
        from megatron_s1.models.vision.preprocess import image_prompt_ids, num_tiles

        if kind != "image":
            raise ConfigError(f"vision.arch=internvit takes images only, not a {kind}; use vision.arch=pro for videos")
        v = self.v
        n = num_tiles(*image_size(item), v.image_size, v.min_tiles, v.max_tiles, v.use_thumbnail)
        return image_prompt_ids(n, self.per_tile, self.ids.img_start, self.ids.img_context, self.ids.img_end)

    def load(self, items: list) -> dict:
        """[(kind, item)] -> {"pixel_values": tiles of all images or None}."""
        from megatron_s1.models.vision.preprocess import dynamic_tiles

        v = self.v
        tiles = [dynamic_tiles(load_image(item), v.image_size, v.min_tiles, v.max_tiles, v.use_thumbnail)
                 for _, item in items]
        return {"pixel_values": torch.cat(tiles) if tiles else None}


class ProMedia:
    """vision.arch=pro: images and videos laid out and patchified as the Intern-S1-Pro release's processors.
    `encode` tokenizes the timestamps of video frames."""

    def __init__(self, vision, ids, encode: Callable[[str], list]):
        from megatron_s1.models.pro.vision.preprocess import ProImageProcessor

        self.processor = ProImageProcessor.from_vision_config(vision)
        self.ids, self.encode = ids, encode

    @staticmethod
    def _clip(item: dict):
        """(frames spec, fps) of a video item."""
        return item["video"], float(item.get("fps") or 0) or None

    @staticmethod
    def _clip_shape(frames) -> tuple[int, int, int]:
        """(frames, width, height) of a clip without decoding it."""
        if isinstance(frames, str):
            array = np.load(frames, mmap_mode="r")
            if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
                raise ConfigError(f"video {frames!r}: expected a uint8 array [frames, height, width, 3], got "
                                  f"{array.dtype} {list(array.shape)}")
            return array.shape[0], array.shape[2], array.shape[1]
        if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
            raise ConfigError(f"a video item needs \"video\": a .npy path or a non-empty list of frame files, "
                              f"got {frames!r}")
        return (len(frames), *image_size(frames[0]))

    @staticmethod
    def _read_clip(frames):
        if isinstance(frames, str):
            return np.load(frames)
        return [load_image(p) for p in frames]

    def prompt_ids(self, kind: str, item) -> list[int]:
        from megatron_s1.models.pro.vision.preprocess import (DEFAULT_VIDEO_FPS, MediaSizeError, frame_times,
                                                               sample_frame_indices)

        p = self.processor
        try:
            if kind == "image":
                return p.image_prompt_ids(p.image_grid(*image_size(item)), self.ids)
            frames, fps = self._clip(item)
            total, width, height = self._clip_shape(frames)
            indices = sample_frame_indices(total, fps)
            grid = p.video_grid(len(indices), width, height)
        except MediaSizeError as err:
            raise MediaSizeError(f"{kind} {item['video'] if kind == 'video' else item}: {err}") from None
        times = frame_times(indices, fps or DEFAULT_VIDEO_FPS, p.temporal)
        return p.video_prompt_ids(grid, times, self.ids, self.encode)

    def load(self, items: list) -> dict:
        """[(kind, item)] -> pixel_values / image_grid_thw and pixel_values_videos / video_grid_thw (None when
        the kind is absent), each kind in the order of its items."""
        from megatron_s1.models.pro.vision.preprocess import ProVisionInputs

        p = self.processor
        images = p.images([load_image(item) for kind, item in items if kind == "image"])
        videos = ProVisionInputs.cat([p.video(self._read_clip(self._clip(item)[0]), self._clip(item)[1])
                                      for kind, item in items if kind == "video"])
        return {"pixel_values": images.pixel_values if images else None,
                "image_grid_thw": images.grid_thw if images else None,
                "pixel_values_videos": videos.pixel_values if videos else None,
                "video_grid_thw": videos.grid_thw if videos else None}


def vision_media(vision, ids, encode: Callable[[str], list]) -> Optional[object]:
    """The media object of `vision.*` (None without vision.preset)."""
    if vision is None or vision.preset is None:
        return None
    if vision.arch == "pro":
        return ProMedia(vision, ids, encode)
    return TiledImages(vision, ids)


def collate_vision(batches: list[dict]) -> dict:
    """Media dicts of several samples -> one (tensors concatenated in sample order; keys all present)."""
    out = {}
    for key in {k for b in batches for k in b if k in VISION_KEYS}:
        parts = [b[key] for b in batches if b.get(key) is not None]
        out[key] = torch.cat(parts) if parts else None
    return out
