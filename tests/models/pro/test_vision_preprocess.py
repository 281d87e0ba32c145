"""Intern-S1-Pro preprocessing (megatron_s1/models/pro/vision/preprocess.py) against the release's processors
loaded from ../shared/reference: pixel values, grid_thw and token layouts on panda.jpg, generated images of odd
sizes and a generated clip; hand-computed sizes, sampling, timestamps and patch order.

The release's image processor is transformers' Qwen2-VL one; transformers 5 runs it with torchvision when that is
installed (the `Fast` processor the release names; bit-exact to ours) and with PIL otherwise (PIL's bicubic
kernel: up to 2 uint8 levels on a few pixels of a downscaled image, exact elsewhere). The release's video
processor needs torchvision; without it its torchvision-free parts (frame sampling, sizes, timestamps, patch
order and padding) are compared."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_s1.models.pro.vision.preprocess import (IMAGE_MEAN, IMAGE_STD, MediaSizeError, ProImageProcessor,
                                                       frame_times, patchify, resized_size, sample_frame_indices)
from tests.conftest import reference_path
from tests.models.pro.release_code import (release_image_processor, release_module, release_processor,
                                           release_video_processor)

LEVEL = 1 / 127.5  # one uint8 level after (x - 127.5) / 127.5


def _gradient(height: int, width: int, shift: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([(xx * 255 // max(width - 1, 1) + shift) % 256, (yy * 255 // max(height - 1, 1) + 3 * shift) % 256,
                     (xx + yy + 7 * shift) % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def images() -> dict:
    rng = np.random.default_rng(0)
    with Image.open(reference_path("intern-s1-pro", "panda.jpg")) as im:
        panda = im.copy()
    return {"panda": panda,  # 720 x 806: downscaled to 704 x 800 (round half to even on 22.5)
            "odd": Image.fromarray(_gradient(217, 333)),  # 333 x 217 -> 320 x 224
            "noise": Image.fromarray(rng.integers(0, 256, (217, 333, 3), dtype=np.uint8)),
            "tiny": Image.fromarray(_gradient(20, 30)),  # below min_pixels: upscaled to 320 x 224
            "exact": Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8))}  # no resize


def _clip(frames: int = 5, height: int = 70, width: int = 90) -> np.ndarray:
    return np.stack([_gradient(height, width, shift=40 * t) for t in range(frames)])


# ------------------------------------------------------------------------------------------- hand values
def test_resized_size_hand_values():
    assert resized_size(806, 720, 32, 65536, 16777216) == (800, 704)  # 720/32 = 22.5 -> 22 (half up: 736)
    assert resized_size(1000, 1000, 32, 1024, 16384) == (128, 128)  # beta = 1000/128: floor(4.0) * 32
    assert resized_size(20, 30, 32, 65536, 16777216) == (224, 320)  # beta = sqrt(65536/600): ceil(6.53), ceil(9.80)
    # a video bounds frames * H * W: 4 frames of 64 x 96 fit 4096..25165824; 4 of 992 x 992 do not fit 2**20
    assert resized_size(70, 90, 32, 4096, 25165824, frames=4, temporal=2) == (64, 96)
    assert resized_size(1000, 1000, 32, 4096, 2 ** 20, frames=4, temporal=2) == (512, 512)  # beta = 1000/512
    with pytest.raises(MediaSizeError, match="thinner than 1:200"):
        resized_size(10, 2500, 32, 1024, 16384)
    p = ProImageProcessor()
    with pytest.raises(MediaSizeError, match="at least temporal_patch_size=2 frames"):
        p.video(_clip(frames=1), sample=False)
    with pytest.raises(MediaSizeError, match="smaller than 32 px"):
        p.video(_clip(height=20), sample=False)


def test_frame_sampling_and_timestamps_hand_values():
    assert sample_frame_indices(5).tolist() == [0, 1, 3, 4]  # 5/24 s x 2 fps -> 0, at least 4 frames
    assert sample_frame_indices(3).tolist() == [0, 1, 2]  # never more than the clip
    # 5 s x 2 fps = 10 frames, every 49/9 = 5.44 frames: 0, 5.44, 10.89, 16.33, ... rounded
    assert sample_frame_indices(50, 10.0).tolist() == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]
    assert frame_times([0, 1, 3, 4], 24.0, 2) == pytest.approx([0.5 / 24, 3.5 / 24])
    assert frame_times([0, 2, 4], 10.0, 2) == pytest.approx([0.1, 0.4])  # last patch: frame 4 twice


def test_patch_order():
    """Row (t, h/m, w/m, m, m), column (C, T, P, P): each value encodes its frame, channel, row and column."""
    n, c, h, w, p, m = 3, 3, 64, 96, 16, 2
    f, ch, y, x = torch.meshgrid(*(torch.arange(k) for k in (n, c, h, w)), indexing="ij")
    frames = (f * 1e6 + ch * 1e5 + y * 1e2 + x).double()
    patches, grid = patchify(frames, p, 2, m)
    assert grid == (2, 4, 6) and patches.shape == (2 * 4 * 6, c * 2 * p * p)
    gh, gw = h // p, w // p
    for t, bh, bw, mh, mw, cc, tt, py, px in [(0, 0, 0, 0, 0, 0, 0, 0, 0), (1, 1, 2, 1, 0, 2, 1, 15, 3),
                                              (0, 1, 1, 0, 1, 1, 1, 7, 9), (1, 0, 2, 1, 1, 0, 0, 4, 15)]:
        row = ((t * (gh // m) + bh) * (gw // m) + bw) * m * m + mh * m + mw
        col = ((cc * 2 + tt) * p + py) * p + px
        frame = min(2 * t + tt, n - 1)  # 3 frames: the last is repeated into the second temporal patch
        expect = frame * 1e6 + cc * 1e5 + ((bh * m + mh) * p + py) * 1e2 + (bw * m + mw) * p + px
        assert patches[row, col].item() == expect


def test_preprocessor_configs_are_the_release():
    from megatron_s1.models.presets import VISION_PRESETS

    preset = VISION_PRESETS["intern-s1-pro-vit"]
    for name, prefix in (("preprocessor_config.json", ""), ("video_preprocessor_config.json", "video_")):
        with open(reference_path("intern-s1-pro", name)) as f:
            cfg = json.load(f)
        assert tuple(cfg["image_mean"]) == IMAGE_MEAN and tuple(cfg["image_std"]) == IMAGE_STD
        assert (cfg["patch_size"], cfg["temporal_patch_size"], cfg["merge_size"]) == \
            (preset["patch_size"], preset["temporal_patch_size"], preset["spatial_merge_size"])
        assert (cfg["size"]["shortest_edge"], cfg["size"]["longest_edge"]) == \
            (preset[prefix + "min_pixels"], preset[prefix + "max_pixels"])


# ------------------------------------------------------------------------------------------- images
def test_images_match_release_pil_backend(images):
    release, ours = release_image_processor("pil"), ProImageProcessor()
    for name, im in images.items():
        ref, got = release(images=[im], return_tensors="pt"), ours.images([im])
        assert got.grid_thw.tolist() == ref["image_grid_thw"].tolist(), name
        assert got.pixel_values.dtype == torch.float32 and got.pixel_values.shape == ref["pixel_values"].shape
        diff = (got.pixel_values - ref["pixel_values"]).abs()
        if name in ("tiny", "exact"):  # no downscale: same uint8 pixels, fp32 normalisation only
            assert diff.max() <= 1e-6, name
        else:  # PIL's and torch's bicubic kernels: at most 2 levels on < 0.5% of the values (measured)
            assert diff.max() <= 2 * LEVEL + 1e-6 and (diff > 1e-6).float().mean() < 5e-3, name
    assert ours.images([images["panda"]]).grid_thw.tolist() == [[1, 50, 44]]


def test_images_match_release_torchvision_backend(images):
    pytest.importorskip("torchvision", reason="the release's Fast (torchvision) image processor needs torchvision")
    release, ours = release_image_processor("torchvision"), ProImageProcessor()
    for name, im in images.items():
        ref, got = release(images=[im], return_tensors="pt"), ours.images([im])
        assert got.grid_thw.tolist() == ref["image_grid_thw"].tolist(), name
        assert torch.equal(got.pixel_values, ref["pixel_values"]), name  # bit-exact


@pytest.fixture(scope="module")
def release_text():
    """(release tokenizer ids of a text, our tokenizer on the release directory, our media token ids)."""
    from megatron_s1.data.multimodal.tokens import resolve_media_tokens
    from megatron_s1.tokenizer import load_tokenizer

    tok = load_tokenizer(reference_path("intern-s1-pro"))
    return tok, resolve_media_tokens(tok, "pro")


def test_token_ids_are_the_release_config(release_text):
    _, ids = release_text
    with open(reference_path("intern-s1-pro", "config.json")) as f:
        cfg = json.load(f)
    assert (ids.img_start, ids.img_end, ids.img_context, ids.video_context) == (
        cfg["vision_start_token_id"], cfg["vision_end_token_id"], cfg["image_token_id"], cfg["video_token_id"])


def test_image_token_layout_matches_release(images, release_text):
    tok, ids = release_text
    processor = release_processor(release_image_processor("pil"))
    pics = [images["panda"], images["odd"]]
    text = ("<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>and Picture 2: "
            "<|vision_start|><|image_pad|><|vision_end|>What differs?<|im_end|>\n")
    ref = processor(images=pics, text=[text], return_tensors="pt")
    ours = ProImageProcessor()
    got = ours.images(pics)
    grids = got.grid_thw.tolist()
    layout = (tok.encode("<|im_start|>user\nPicture 1: ") + ours.image_prompt_ids(grids[0], ids) +
              tok.encode("and Picture 2: ") + ours.image_prompt_ids(grids[1], ids) +
              tok.encode("What differs?<|im_end|>\n"))
    assert layout == ref["input_ids"][0].tolist()
    assert layout.count(ids.img_context) == 50 * 44 // 4 + 14 * 20 // 4
    assert torch.equal(ref["image_grid_thw"], got.grid_thw)


# ------------------------------------------------------------------------------------------- videos
def test_video_parts_match_release():
    """Frame sampling, sizes, timestamps, temporal padding and patch order against the release code that runs
    without torchvision (the video processor's own methods and module functions)."""
    from transformers.video_utils import VideoMetadata

    module = release_module("video_processing_interns1_pro")
    vp = module.InternS1ProVideoProcessor()
    for total, fps in ((5, None), (3, None), (100, 10.0), (2000, 30.0), (9, 24.0)):
        want = vp.sample_frames(VideoMetadata(total_num_frames=total, fps=fps))
        assert sample_frame_indices(total, fps).tolist() == want.tolist(), (total, fps)
    for frames, h, w in ((4, 70, 90), (5, 1080, 1920), (768, 720, 1280), (2, 33, 6000), (4, 3000, 40)):
        assert resized_size(h, w, 32, 4096, 25165824, frames=frames, temporal=2) == \
            module.smart_resize(frames, h, w, 2, 32, 4096, 25165824)
    timestamps = release_module("processing_interns1_pro").InternS1ProProcessor._calculate_timestamps
    for indices, fps in (([0, 1, 3, 4], 24.0), ([0, 2, 4], 10.0), (list(range(0, 60, 3)), 30.0)):
        assert frame_times(indices, fps, 2) == pytest.approx(timestamps(None, list(indices), fps, 2), abs=0)
    # patches of 5 rescaled frames (no resize / normalisation: those need torchvision there)
    clip = torch.from_numpy(_clip(5, 64, 96)).permute(0, 3, 1, 2).contiguous()
    ref = vp._preprocess([clip], do_convert_rgb=False, do_resize=False, size=None, interpolation=None,
                         do_rescale=True, rescale_factor=1 / 255, do_normalize=False, image_mean=None, image_std=None,
                         patch_size=16, temporal_patch_size=2, merge_size=2, return_tensors="pt")
    patches, grid = patchify(clip.float() * (1 / 255), 16, 2, 2)
    assert list(grid) == ref["video_grid_thw"][0].tolist() == [3, 4, 6]
    assert torch.equal(patches, ref["pixel_values_videos"])


def test_video_matches_release(release_text):
    """The whole clip path (sampling, resize, normalisation, padding, patches, grid) and its token layout."""
    pytest.importorskip("torchvision", reason="the release's video processor (transformers BaseVideoProcessor) "
                                              "needs torchvision")
    tok, ids = release_text
    video_processor = release_video_processor()
    processor = release_processor(release_image_processor("torchvision"), video_processor)
    ours = ProImageProcessor()
    text = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>\nWhat moves?<|im_end|>\n"
    for clip, fps in ((_clip(5), None), (_clip(9, 300, 200), 12.0)):
        kwargs = {} if fps is None else {"video_metadata": [{"total_num_frames": len(clip), "fps": fps}]}
        ref = processor(videos=[clip], text=[text], return_tensors="pt", **kwargs)
        got = ours.video(clip, fps)
        assert got.grid_thw.tolist() == ref["video_grid_thw"].tolist()
        assert torch.equal(got.pixel_values, ref["pixel_values_videos"])  # bit-exact
        layout = (tok.encode("<|im_start|>user\n") + ours.video_prompt_ids(got.grid_thw[0], got.times, ids, tok.encode)
                  + tok.encode("\nWhat moves?<|im_end|>\n"))
        assert layout == ref["input_ids"][0].tolist()
