"""InternVL dynamic tiling and prompt expansion.

An image of size (W, H) is cut into a grid of `cols x rows` tiles of `image_size` pixels, the grid chosen
among all grids with min_tiles <= cols*rows <= max_tiles whose aspect ratio is closest to W/H (ties go to
the larger grid when the image has more than half the pixels of that grid). A thumbnail (the whole image
resized to one tile) is appended when the grid has more than one tile. Every tile becomes
`tokens_per_tile = (image_size / patch * downsample_ratio)^2` tokens (256 for 448/14/0.5), and the prompt
carries `<img>` + tiles*256 x `<IMG_CONTEXT>` + `</img>` per image.
"""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """(cols, rows) grids with min..max tiles, ordered by tile count (InternVL's order)."""
    grids = {(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, image_size: int = 448, min_tiles: int = 1,
                max_tiles: int = 12) -> tuple[int, int]:
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    area = width * height
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def num_tiles(width: int, height: int, image_size: int = 448, min_tiles: int = 1, max_tiles: int = 12,
              use_thumbnail: bool = True) -> int:
    cols, rows = choose_grid(width, height, image_size, min_tiles, max_tiles)
    n = cols * rows
    return n + 1 if (use_thumbnail and n != 1) else n


def tokens_per_tile(image_size: int = 448, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
    side = image_size // patch_size
    return int(side * downsample_ratio) ** 2


def _to_tensor(img, image_size: int) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB").resize((image_size, image_size), resample=3), dtype=np.float32) / 255.0
    arr = (arr - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def dynamic_tiles(image, image_size: int = 448, min_tiles: int = 1, max_tiles: int = 12,
                  use_thumbnail: bool = True) -> torch.Tensor:
    """PIL image -> normalised tiles [n, 3, image_size, image_size] (row-major grid, then thumbnail)."""
    image = image.convert("RGB")
    cols, rows = choose_grid(image.width, image.height, image_size, min_tiles, max_tiles)
    resized = image.resize((cols * image_size, rows * image_size), resample=3)  # bicubic
    tiles = []
    for r in range(rows):
        for c in range(cols):
            box = (c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size)
            tiles.append(_to_tensor(resized.crop(box), image_size))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(_to_tensor(image, image_size))
    return torch.stack(tiles)


def image_prompt_ids(n_tiles: int, per_tile: int, img_start: int, img_context: int, img_end: int) -> list[int]:
    """`<img>` + n_tiles*per_tile x `<IMG_CONTEXT>` + `</img>`."""
    return [img_start] + [img_context] * (n_tiles * per_tile) + [img_end]
