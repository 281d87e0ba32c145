"""InternVL tiling, prompt expansion, pixel unshuffle order and vision-tower shapes."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from megatron_s1.models.vision.internvit import pixel_unshuffle, vision_tokens
from megatron_s1.models.vision.preprocess import (choose_grid, dynamic_tiles, image_prompt_ids, num_tiles,
                                                  tokens_per_tile)


def test_tokens_per_tile_448():
    assert tokens_per_tile(448, 14, 0.5) == 256  # 32x32 patches -> 16x16
    assert tokens_per_tile(56, 14, 0.5) == 4


@pytest.mark.parametrize("grid_tiles", range(1, 13))
def test_every_tile_count_shapes_and_tokens(grid_tiles):
    # An n:1 image picks the n x 1 grid; a thumbnail is added when n > 1.
    img = Image.new("RGB", (448 * grid_tiles, 448), (10, 20, 30))
    assert choose_grid(img.width, img.height) == (grid_tiles, 1)
    n = num_tiles(img.width, img.height)
    assert n == grid_tiles + (1 if grid_tiles > 1 else 0)
    tiles = dynamic_tiles(img)
    assert tiles.shape == (n, 3, 448, 448)
    ids = image_prompt_ids(n, tokens_per_tile(), 1, 2, 3)
    assert len(ids) == n * 256 + 2 and ids[0] == 1 and ids[-1] == 3 and ids.count(2) == n * 256
    assert num_tiles(img.width, img.height, use_thumbnail=False) == grid_tiles


def test_grid_choice_follows_internvl_rules():
    assert choose_grid(800, 600) == (4, 3)  # 4:3 is available with 12 tiles
    # Square images tie on every n x n grid; a larger grid wins when the image has more than half its pixels:
    # 0.5 * 448^2 * 4 = 401408, 0.5 * 448^2 * 9 = 903168.
    assert choose_grid(600, 600) == (1, 1)  # 360000 px
    assert choose_grid(700, 700) == (2, 2)  # 490000 px
    assert choose_grid(1000, 1000) == (3, 3)  # 1e6 px
    assert choose_grid(448, 448, max_tiles=1) == (1, 1)
    assert choose_grid(100, 2000, max_tiles=6) == (1, 6)


def test_tiles_are_normalised_crops():
    img = Image.new("RGB", (896, 448), (255, 255, 255))
    img.paste((0, 0, 0), (448, 0, 896, 448))  # right half black
    tiles = dynamic_tiles(img)
    assert tiles.shape[0] == 3
    assert tiles[0].mean() > 1.5 and tiles[1].mean() < -1.5  # white left tile, black right tile
    assert abs(tiles[2].mean()) < tiles[0].mean()  # thumbnail mixes both


def test_pixel_unshuffle_matches_internvl_order():
    transformers = pytest.importorskip("transformers.models.internvl.modeling_internvl")
    x = torch.randn(2, 8, 8, 5)
    ref = transformers.InternVLModel.pixel_shuffle(None, x, 0.5)
    torch.testing.assert_close(pixel_unshuffle(x, 0.5), ref)
    # Hand check of one cell: channel (m*2 + k)*C + c of cell (i, j) is input (2i+m, 2j+k, c).
    y = pixel_unshuffle(x, 0.5)
    assert torch.equal(y[1, 2, 3, (1 * 2 + 0) * 5 + 4], x[1, 5, 6, 4])


def test_vision_tokens_drop_cls_and_count():
    hidden = torch.randn(3, 1 + 32 * 32, 16)
    out = vision_tokens(hidden, 0.5)
    assert out.shape == (3, 256, 64)
    # CLS is dropped: changing it changes nothing
    hidden2 = hidden.clone()
    hidden2[:, 0] += 1
    torch.testing.assert_close(vision_tokens(hidden2, 0.5), out)


def test_presets_have_published_shapes():
    from megatron_s1.config.schema import load_config

    v = load_config(None, ["vision.preset=internvit-6b"]).vision
    assert (v.num_layers, v.hidden_size, v.num_attention_heads, v.ffn_hidden_size) == (45, 3200, 25, 12800)
    assert v.normalization == "RMSNorm" and v.qk_layernorm and not v.add_qkv_bias
    v = load_config(None, ["vision.preset=internvit-300m"]).vision
    assert (v.num_layers, v.hidden_size, v.num_attention_heads, v.ffn_hidden_size) == (24, 1024, 16, 4096)
    assert v.normalization == "LayerNorm" and v.add_qkv_bias and not v.qk_layernorm
    cfg = load_config(None, ["train.task=mm_pretrain", "model.preset=intern-s1"])
    assert cfg.vision.preset == "internvit-6b"
    assert load_config(None, ["model.preset=intern-s1"]).vision.preset is None  # text CPT: no tower


def test_padded_heads():
    from megatron_s1.models.vision.internvit import padded_num_heads

    assert padded_num_heads(25, 1) == 25 and padded_num_heads(25, 2) == 26 and padded_num_heads(25, 8) == 32
