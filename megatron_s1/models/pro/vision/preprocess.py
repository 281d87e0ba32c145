"""Intern-S1-Pro image / video preprocessing: what the release's processors feed its vision tower.

Images (the release's `preprocessor_config.json`, a Qwen2-VL image processor) and videos (its
`video_processing_interns1_pro.py`) go through the same steps:

1. Size. With the factor f = patch_size * merge_size (32), a frame of H x W becomes H' x W', multiples of f
   closest to H x W (Python's `round`, halves to even); if T' * H' * W' leaves [min_pixels, max_pixels]
   (T' = the frame count rounded to a multiple of temporal_patch_size; 1 for an image) the frame is scaled by
   beta = sqrt(T*H*W / max_pixels) (floor to multiples of f, at least f) or sqrt(min_pixels / (T*H*W)) (ceil).
   `resized_size` is that rule; the pixel bounds are `vision.min_pixels / max_pixels` for images and
   `vision.video_min_pixels / video_max_pixels` for videos (the two preprocessor configs).
2. Resize: antialiased bicubic on the uint8 RGB frames, rounded back to uint8 (torch's uint8 kernel, which
   is what the release's torchvision-backed processors run on CPU). Transparent images are composited
   onto white first.
3. Normalise in fp32: (x - 255 mean) / (255 std), mean = std = 0.5 (both configs).
4. Frames: an image is one frame; a video is first sampled (`sample_frame_indices`). The frame count is
   padded to a multiple of T = temporal_patch_size by repeating the last frame (an image: T copies).
5. Patches: frames [T*gt, C, H', W'] -> rows in the order (t, h/m, w/m, m, m) — every m*m consecutive rows
   are one LLM token — each row the values (C, T, P, P): [gt*gh*gw, C*T*P*P], grid_thw = (gt, gh, gw) with
   gh = H'/P, gw = W'/P.

Token layout (the release's processor and chat template): an image is `<|vision_start|>` +
gh*gw/m^2 x `<|image_pad|>` + `<|vision_end|>`; a video is, per temporal patch t, the text
`<{time:.1f} seconds>` (the mean time of its first and last frame, frame index / video fps) +
`<|vision_start|>` + gh*gw/m^2 x `<|video_pad|>` + `<|vision_end|>`. The token ids are the tokenizer's
(`data.multimodal.tokens.resolve_media_tokens`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from megatron_s1.config.schema import ConfigError

# preprocessor_config.json / video_preprocessor_config.json of the release (tests check them).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
# The release video processor's frame sampling: `fps` frames per second of video, between min and max frames;
# a clip whose frame rate is unknown counts as 24 fps.
VIDEO_SAMPLE_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 768
DEFAULT_VIDEO_FPS = 24.0
MAX_ASPECT_RATIO = 200


class MediaSizeError(ConfigError):
    """An image or video the Pro preprocessing cannot take (too small, too thin, too few frames): bad input."""


def resized_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int = 1,
                 temporal: int = 1) -> tuple[int, int]:
    """(H', W'): multiples of `factor` near (height, width) with frames' * H' * W' inside [min, max] pixels
    (step 1 of the module docstring). frames / temporal: the video's frame count and temporal patch size."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise MediaSizeError(f"a {width}x{height} frame is thinner than 1:{MAX_ASPECT_RATIO}; crop or pad it")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    t = round(frames / temporal) * temporal
    if t * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def sample_frame_indices(total: int, video_fps: Optional[float] = None, fps: float = VIDEO_SAMPLE_FPS,
                         min_frames: int = VIDEO_MIN_FRAMES, max_frames: int = VIDEO_MAX_FRAMES) -> np.ndarray:
    """Indices of the frames kept from a clip of `total` frames recorded at `video_fps`: `fps` per second of
    video, at least min_frames and at most max_frames (never more than the clip has), spread evenly over the
    clip (rounded)."""
    video_fps = video_fps or DEFAULT_VIDEO_FPS
    count = min(max(int(total / video_fps * fps), min_frames), max_frames, total)
    return np.linspace(0, total - 1, count).round().astype(int)


def frame_times(indices: Sequence[int], video_fps: float, temporal: int) -> list[float]:
    """Seconds of each temporal patch: the mean of the times of its first and last frame (the last frame
    repeated to fill the last patch)."""
    idx = list(int(i) for i in indices)
    idx += [idx[-1]] * (-len(idx) % temporal)
    seconds = [i / video_fps for i in idx]
    return [(seconds[i] + seconds[i + temporal - 1]) / 2 for i in range(0, len(idx), temporal)]


def to_rgb(image):
    """PIL image -> RGB, transparency composited onto white."""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def frames_tensor(frames) -> torch.Tensor:
    """PIL images / uint8 arrays [H, W, 3] / one uint8 array [N, H, W, 3] -> uint8 [N, 3, H, W]."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        arrays = list(frames)
    else:
        arrays = [np.asarray(to_rgb(f)) if hasattr(f, "getbands") else np.asarray(f) for f in frames]
    for a in arrays:
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise MediaSizeError(f"a frame must be uint8 RGB [H, W, 3], got {a.dtype} {list(a.shape)}")
    # channels-last memory, as the release's processors hand frames to torch (its uint8 resize is faster so)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [N, C, H, W] -> uint8 [N, C, height, width], antialiased bicubic (step 2)."""
    if frames.shape[-2:] == (height, width):
        return frames
    return F.interpolate(frames, size=[height, width], mode="bicubic", align_corners=False, antialias=True)


def normalize(frames: torch.Tensor, mean: Sequence[float] = IMAGE_MEAN,
              std: Sequence[float] = IMAGE_STD) -> torch.Tensor:
    """uint8 [N, C, H, W] -> fp32 (x - 255 mean) / (255 std) (step 3)."""
    mean = (torch.tensor(mean, dtype=torch.float32) * 255.0).view(1, -1, 1, 1)
    std = (torch.tensor(std, dtype=torch.float32) * 255.0).view(1, -1, 1, 1)
    return (frames.to(torch.float32) - mean) / std


def patchify(frames: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """fp32 frames [N, C, H, W] (H, W multiples of patch*merge) -> (patches [gt*gh*gw, C*T*P*P], (gt, gh, gw))
    (steps 4-5: frames padded to a multiple of T by repeating the last one)."""
    pad = -frames.shape[0] % temporal
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    n, c, h, w = frames.shape
    gt, gh, gw = n // temporal, h // patch, w // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/m, w/m, m, m, C, T, P, P)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), (gt, gh, gw)


@dataclass
class ProVisionInputs:
    """The tower's inputs for some images / videos: patches concatenated in order and one grid per item."""
    pixel_values: torch.Tensor  # [S, C*T*P*P] fp32
    grid_thw: torch.Tensor  # [n, 3] int64

    @staticmethod
    def cat(items: list["ProVisionInputs"]) -> Optional["ProVisionInputs"]:
        if not items:
            return None
        return ProVisionInputs(torch.cat([i.pixel_values for i in items]), torch.cat([i.grid_thw for i in items]))


@dataclass
class ProVideo(ProVisionInputs):
    times: list  # seconds of each temporal patch (the prompt's timestamps)


class ProImageProcessor:
    """Images and videos -> `ProVisionInputs` and their prompt token ids, as the release's processors.

    Built from `vision.*` (arch=pro): patch_size, temporal_patch_size, spatial_merge_size and the pixel
    bounds; `from_vision_config(cfg.vision)`."""

    def __init__(self, patch_size: int = 16, temporal_patch_size: int = 2, merge_size: int = 2,
                 min_pixels: int = 65536, max_pixels: int = 16777216, video_min_pixels: int = 4096,
                 video_max_pixels: int = 25165824):
        self.patch, self.temporal, self.merge = patch_size, temporal_patch_size, merge_size
        self.factor = patch_size * merge_size
        self.image_pixels = (min_pixels, max_pixels)
        self.video_pixels = (video_min_pixels, video_max_pixels)

    @classmethod
    def from_vision_config(cls, v) -> "ProImageProcessor":
        return cls(v.patch_size, v.temporal_patch_size, v.spatial_merge_size, v.min_pixels, v.max_pixels,
                   v.video_min_pixels, v.video_max_pixels)

    # ---------------------------------------------------------------------------------------- images
    def image_grid(self, width: int, height: int) -> tuple[int, int, int]:
        """(1, gh, gw) of a width x height image, from its size alone."""
        h, w = resized_size(height, width, self.factor, *self.image_pixels)
        return 1, h // self.patch, w // self.patch

    def images(self, images: list) -> Optional[ProVisionInputs]:
        """PIL images -> their patches and grids (None for no image)."""
        return ProVisionInputs.cat([self._frames(frames_tensor([im]), self.image_pixels) for im in images])

    # ---------------------------------------------------------------------------------------- videos
    def video_grid(self, frames: int, width: int, height: int) -> tuple[int, int, int]:
        """(gt, gh, gw) of a clip of `frames` sampled frames of width x height."""
        h, w = self._video_size(frames, height, width)
        return -(-frames // self.temporal), h // self.patch, w // self.patch

    def video(self, frames, video_fps: Optional[float] = None, sample: bool = True) -> ProVideo:
        """A clip (uint8 [N, H, W, 3] or a list of PIL frames) -> patches, grid and timestamps. With
        sample=True the frames are sampled first (`sample_frame_indices`, the release's default)."""
        video = frames_tensor(frames)
        video_fps = video_fps or DEFAULT_VIDEO_FPS
        indices = sample_frame_indices(video.shape[0], video_fps) if sample else np.arange(video.shape[0])
        video = video[torch.from_numpy(indices)]
        out = self._frames(video, self.video_pixels, video=True)
        return ProVideo(out.pixel_values, out.grid_thw, frame_times(indices, video_fps, self.temporal))

    def _video_size(self, frames: int, height: int, width: int) -> tuple[int, int]:
        if frames < self.temporal:
            raise MediaSizeError(f"a video needs at least temporal_patch_size={self.temporal} frames, got {frames}")
        if min(height, width) < self.factor:
            raise MediaSizeError(f"video frames of {width}x{height} are smaller than {self.factor} px a side "
                                 "(patch_size * spatial_merge_size); upscale them")
        return resized_size(height, width, self.factor, *self.video_pixels, frames=frames, temporal=self.temporal)

    def _frames(self, frames: torch.Tensor, pixels: tuple[int, int], video: bool = False) -> ProVisionInputs:
        n, _, height, width = frames.shape
        if video:
            h, w = self._video_size(n, height, width)
        else:
            h, w = resized_size(height, width, self.factor, *pixels)
        patches, grid = patchify(normalize(resize_frames(frames, h, w)), self.patch, self.temporal, self.merge)
        return ProVisionInputs(patches, torch.tensor([grid], dtype=torch.long))

    # ---------------------------------------------------------------------------------------- tokens
    def tokens_per_frame(self, grid: Sequence[int]) -> int:
        return int(grid[1]) * int(grid[2]) // (self.merge * self.merge)

    def image_prompt_ids(self, grid: Sequence[int], ids) -> list[int]:
        """`<|vision_start|>` + tokens x `<|image_pad|>` + `<|vision_end|>` (ids: MediaTokenIds)."""
        return [ids.img_start] + [ids.img_context] * (int(grid[0]) * self.tokens_per_frame(grid)) + [ids.img_end]

    def video_prompt_ids(self, grid: Sequence[int], times: Sequence[float], ids,
                         encode: Callable[[str], list]) -> list[int]:
        """Per temporal patch: the encoded `<{time:.1f} seconds>` + `<|vision_start|>` + tokens x
        `<|video_pad|>` + `<|vision_end|>`."""
        if ids.video_context is None:
            raise ValueError("videos need the <|video_pad|> token id (vision.arch=pro)")
        frame = [ids.img_start] + [ids.video_context] * self.tokens_per_frame(grid) + [ids.img_end]
        out: list[int] = []
        for t in times[: int(grid[0])]:
            out += list(encode(f"<{t:.1f} seconds>")) + frame
        return out
