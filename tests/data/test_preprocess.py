import json
import os

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_s1.config import ConfigError, load_config
from megatron_s1.data.datasets import build_gpt_datasets, microbatches, parse_blend
from megatron_s1.data.preprocess import preprocess
from megatron_s1.tokenizer import load_tokenizer


def _write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


TEXTS = ["Hello world. Ethanol is CCO.", "Protein: MKTAYIAKQRQISFVKSHFSRQ", "ümlaut ✓ 数据 \n\n tabs\t!",
         "C1=CC=CC=C1 benzene"] * 150  # > one chunk of lines


def test_preprocess_round_trip(tmp_path):
    src = tmp_path / "docs.jsonl"
    _write_jsonl(src, TEXTS)
    stats = preprocess(str(src), str(tmp_path / "out"), workers=1, progress=False)
    tok = load_tokenizer()
    ds = IndexedDataset(str(tmp_path / "out"))
    assert len(ds) == len(TEXTS) == stats["documents"]
    for i in (0, 1, 2, 3, len(TEXTS) - 1):
        ids = ds[i].tolist()
        assert ids[-1] == tok.eod_id
        assert tok.decode(ids[:-1]) == TEXTS[i]
    assert stats["tokens"] == int(ds.sequence_lengths.sum())
    assert not any(".tmp" in name for name in os.listdir(tmp_path))


def test_preprocess_parallel_equals_serial(tmp_path):
    src = tmp_path / "docs.jsonl"
    _write_jsonl(src, TEXTS)
    preprocess(str(src), str(tmp_path / "serial"), workers=1, progress=False)
    preprocess(str(src), str(tmp_path / "parallel"), workers=2, progress=False)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"serial{suffix}").read_bytes() == (tmp_path / f"parallel{suffix}").read_bytes()


def test_preprocess_bad_input(tmp_path):
    """Bad input: one clear error, and an earlier output pair under the same prefix survives byte for byte."""
    _write_jsonl(tmp_path / "good.jsonl", TEXTS[:3])
    preprocess(str(tmp_path / "good.jsonl"), str(tmp_path / "kept"), progress=False)
    kept = {s: (tmp_path / f"kept{s}").read_bytes() for s in (".bin", ".idx")}
    (tmp_path / "half_bad.jsonl").write_text('{"text": "fine"}\n{"content": "no text key"}\n')
    with pytest.raises(ValueError, match="half_bad.jsonl:2: no string 'text' field"):
        preprocess(str(tmp_path / "half_bad.jsonl"), str(tmp_path / "kept"), progress=False)
    assert {s: (tmp_path / f"kept{s}").read_bytes() for s in (".bin", ".idx")} == kept
    with pytest.raises(FileNotFoundError, match="does not exist"):
        preprocess(str(tmp_path / "missing.jsonl"), str(tmp_path / "x"), progress=False)
    (tmp_path / "bad.jsonl").write_text('{"content": "no text key"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: no string 'text' field; pass --json-key"):
        preprocess(str(tmp_path / "bad.jsonl"), str(tmp_path / "x"), progress=False)
    assert not (tmp_path / "x.bin").exists()
    assert not any(".tmp" in name for name in os.listdir(tmp_path))


def test_blend_parsing_and_missing_path(tmp_path):
    with pytest.raises(ConfigError, match="data path .*missing.bin' does not exist; run `megatron-s1 preprocess"):
        parse_blend([str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="data.blend is empty"):
        parse_blend([])


def test_weighted_blend_and_splits(tmp_path, data_prefix):
    src = tmp_path / "other.jsonl"
    _write_jsonl(src, TEXTS)
    preprocess(str(src), str(tmp_path / "other"), workers=1, progress=False)
    cfg = load_config(None, [f"data.blend=[[0.75, {data_prefix}], [0.25, {tmp_path / 'other'}]]",
                             "data.seq_length=64", "data.split=90,10,0"])
    tok = load_tokenizer()
    train, valid, test = build_gpt_datasets(cfg.data, 7, tok.vocab_size, tok.eod_id, [400, 40, 0],
                                            str(tmp_path / "cache"), create_attention_mask=True)
    assert len(train) >= 400 and len(valid) >= 40 and test is None
    # The blend draws 3:1 from the two datasets.
    counts = np.bincount(train.dataset_index[:400], minlength=2)
    assert abs(counts[0] / 400 - 0.75) < 0.02
    sample = train[0]
    assert sample["tokens"].shape == (64,) and sample["labels"].shape == (64,)
    assert sample["attention_mask"].shape == (1, 64, 64)
    # Micro-batches of one global batch: DP ranks read disjoint contiguous slices.
    rank0 = list(microbatches(train, 16, 8, 0, 2, 2))
    rank1 = list(microbatches(train, 16, 8, 1, 2, 2))
    assert len(rank0) == len(rank1) == 2
    assert np.array_equal(rank0[0]["tokens"][0].numpy(), train[16]["tokens"].numpy())
    assert np.array_equal(rank1[1]["tokens"][1].numpy(), train[23]["tokens"].numpy())
