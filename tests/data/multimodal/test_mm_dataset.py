"""Multimodal jsonl samples: prompt expansion, text-only loss mask, whole-media truncation, reserved ids."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_s1.config.schema import load_config
from megatron_s1.data.multimodal import MultimodalJsonlDataset, collate, resolve_media_tokens
from megatron_s1.models.timeseries import num_timeseries_tokens
from megatron_s1.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("mmdata")
    Image.new("RGB", (112, 56), (200, 10, 10)).save(d / "wide.png")  # 2x1 grid + thumbnail = 3 tiles
    np.save(d / "sig.npy", np.random.default_rng(0).standard_normal((300, 2)).astype(np.float32))
    rows = [{"content": [{"text": "hello"}, {"image": "wide.png"}, {"text": " world"},
                         {"timeseries": "sig.npy", "sampling_rate": 100}, {"text": " end"}]},
            {"content": [{"text": "x " * 40}, {"image": "wide.png"}]}]
    with open(d / "s.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    cfg = load_config(None, ["vision.preset=tiny-vit", "vision.max_tiles=4", "timeseries.preset=tiny-ts"])
    tok = load_tokenizer(None)
    media = resolve_media_tokens(tok)
    return d, cfg, tok, media


def test_reserved_media_ids_follow_the_vocabulary(setup):
    _, _, tok, media = setup
    assert media.all() == list(range(tok.vocab_size, tok.vocab_size + 6))


def test_expansion_and_loss_mask(setup):
    d, cfg, tok, media = setup
    ds = MultimodalJsonlDataset([str(d / "s.jsonl")], tok, media, 128, cfg.vision, cfg.timeseries)
    s = ds[0]
    toks = s["tokens"].tolist() + [s["labels"][-1].item()]
    assert toks.count(media.img_context) == 3 * 4 and s["pixel_values"].shape == (3, 3, 56, 56)
    assert toks.count(media.ts_context) == num_timeseries_tokens(300, 100) and s["ts_values"][0].shape == (300, 2)
    labels, mask = s["labels"], s["loss_mask"]
    is_media = torch.zeros_like(mask, dtype=torch.bool)
    for m in media.all():
        is_media |= labels == m
    assert not (mask.bool() & is_media).any()  # no loss on media tokens
    n_loss = int(mask.sum())
    assert n_loss == ds.loss_tokens(0) > 0
    text_ids = tok.encode("hello") + tok.encode(" world") + tok.encode(" end")
    assert n_loss == len(text_ids)  # every text token but the first is a label, plus the EOD
    batch = collate([ds[0], ds[0]], create_attention_mask=True)
    assert batch["pixel_values"].shape[0] == 6 and len(batch["ts_values"]) == 2
    assert batch["attention_mask"].shape == (1, 1, 128, 128)


def test_truncation_drops_media_that_does_not_fit(setup):
    d, cfg, tok, media = setup
    ds = MultimodalJsonlDataset([str(d / "s.jsonl")], tok, media, 48, cfg.vision, cfg.timeseries)
    n_text = len(tok.encode("x " * 40))
    assert 48 + 1 - n_text < 14  # the 3-tile image (14 tokens) cannot fit whole after the text
    s = ds[1]
    assert media.img_context not in s["tokens"].tolist() and s["pixel_values"] is None
    assert int(s["loss_mask"].sum()) == ds.loss_tokens(1) == n_text  # text labels + EOD


def test_media_tokens_must_fit_the_model_vocabulary():
    from megatron_s1.config import ConfigError
    from megatron_s1.data.multimodal.tokens import media_tokens_for_model
    from megatron_s1.tokenizer import load_tokenizer

    tok = load_tokenizer()
    media = media_tokens_for_model(tok, tok.vocab_size + 6)  # six reserved ids right after the vocabulary
    assert sorted(media.all()) == list(range(tok.vocab_size, tok.vocab_size + 6))
    with pytest.raises(ConfigError, match=rf"set model.vocab_size >= {tok.vocab_size + 6}"):
        media_tokens_for_model(tok, tok.vocab_size + 5)


def test_pro_layout_and_media(tmp_path):
    """vision.arch=pro: an image and a video (frame files) in one sample: Pro placeholders (vision start / end
    around patches/4 pads, per-frame timestamps), loss on text only, patches and grids in token order."""
    from megatron_s1.models.pro.vision.preprocess import ProImageProcessor

    Image.new("RGB", (90, 70), (200, 10, 10)).save(tmp_path / "a.png")  # -> 96 x 64 px: grid 1 x 4 x 6
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (5, 70, 90, 3), dtype=np.uint8)
    for t, frame in enumerate(clip):
        Image.fromarray(frame).save(tmp_path / f"f{t}.png")
    row = {"content": [{"text": "see"}, {"image": "a.png"}, {"text": " and"},
                       {"video": [f"f{t}.png" for t in range(5)], "fps": 10}, {"text": " done"}]}
    (tmp_path / "s.jsonl").write_text(json.dumps(row) + "\n")
    cfg = load_config(None, ["vision.preset=tiny-pro-vit"])
    tok = load_tokenizer(None)
    media = resolve_media_tokens(tok, "pro")
    assert media.all() == list(range(tok.vocab_size, tok.vocab_size + 7))  # 4 vision + 3 series ids reserved
    ds = MultimodalJsonlDataset([str(tmp_path / "s.jsonl")], tok, media, 128, cfg.vision)
    s = ds[0]
    # 5 frames at 10 fps: 4 sampled (0, 1, 3, 4), 2 temporal patches at (0.0 + 0.1) / 2 and (0.3 + 0.4) / 2 s
    frame = [media.img_start] + [media.video_context] * 6 + [media.img_end]  # 64 x 96 px: 4 x 6 patches / 4
    want = (tok.encode("see") + [media.img_start] + [media.img_context] * 6 + [media.img_end] + tok.encode(" and")
            + tok.encode("<0.1 seconds>") + frame + tok.encode("<0.3 seconds>") + frame + tok.encode(" done")
            + [tok.eod_id])
    ids = ds.ids(0)
    assert ids == want
    assert int(s["loss_mask"].sum()) == len(ids) - 1 - 2 * (6 + 2) - (6 + 2)  # text labels only (+ EOD)
    p = ProImageProcessor.from_vision_config(cfg.vision)
    image, video = p.images([Image.open(tmp_path / "a.png")]), p.video(clip, 10.0)
    assert s["image_grid_thw"].tolist() == [[1, 4, 6]] and s["video_grid_thw"].tolist() == [[2, 4, 6]]
    assert torch.equal(s["pixel_values"], image.pixel_values)
    assert torch.equal(s["pixel_values_videos"], video.pixel_values)
    batch = collate([s, s], create_attention_mask=False)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 6]] * 2 and batch["pixel_values_videos"].shape[0] == 2 * 48


def test_pro_media_that_cannot_be_preprocessed_is_bad_input(tmp_path):
    """Bad input (exit 2 through ConfigError), naming the file: an image thinner than 1:200, a 1-frame clip."""
    from megatron_s1.config.schema import ConfigError

    Image.new("RGB", (3000, 10)).save(tmp_path / "thin.png")
    np.save(tmp_path / "one.npy", np.zeros((1, 64, 64, 3), np.uint8))
    cfg = load_config(None, ["vision.preset=tiny-pro-vit"])
    tok = load_tokenizer(None)
    for item, message in (({"image": "thin.png"}, "thin.png: a 3000x10 frame is thinner than 1:200"),
                          ({"video": "one.npy"}, "one.npy: a video needs at least temporal_patch_size=2 frames")):
        (tmp_path / "s.jsonl").write_text(json.dumps({"content": [{"text": "x"}, item]}) + "\n")
        ds = MultimodalJsonlDataset([str(tmp_path / "s.jsonl")], tok, resolve_media_tokens(tok, "pro"), 64, cfg.vision)
        with pytest.raises(ConfigError, match=message):
            ds.ids(0)
