import json
import os

import pytest
from tokenizers import Tokenizer

from megatron_s1.tokenizer import ByteLevelBPETokenizer, bundled_tokenizer_dir, load_tokenizer
from tests.conftest import CORPUS


def test_bundled_tokenizer_matches_hf_tokenizers_on_corpus():
    ours = load_tokenizer()
    hf = Tokenizer.from_file(os.path.join(bundled_tokenizer_dir(), "tokenizer.json"))
    with open(CORPUS, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:300]
    texts += ["<|im_start|>user\nHi<|im_end|>", "  leading spaces and 12345 digits", "émoji 🙂 and 中文"]
    for text in texts:
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids
        assert ours.decode(ids) == text
    assert ours.encode_batch(texts[:5]) == [ours.encode(t) for t in texts[:5]]
    assert ours.eod_id == hf.token_to_id("<|endoftext|>")


def test_missing_vocab_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no vocab.json"):
        ByteLevelBPETokenizer(str(tmp_path))


def test_directory_without_merges_is_refused(tmp_path):
    """vocab.json alone (a partial copy) is not a tokenizer directory, although the ranks come from vocab.json."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(bundled_tokenizer_dir(), partial)
    os.remove(partial / "merges.txt")
    with pytest.raises(FileNotFoundError, match="has no merges.txt; copy the model's complete tokenizer directory"):
        ByteLevelBPETokenizer(str(partial))
