"""Tokenizers. `load_tokenizer(dir)` is the one factory the data pipeline uses.

Every tokenizer offers: encode(text) -> list[int], encode_batch(texts) -> list[list[int]],
decode(ids) -> str, vocab_size, eod_id.
"""
from megatron_s1.tokenizer.bpe import ByteLevelBPETokenizer, bundled_tokenizer_dir


def load_tokenizer(directory: str | None = None):
    """Load the tokenizer in `directory` (default: the bundled demo tokenizer)."""
    return ByteLevelBPETokenizer(directory or bundled_tokenizer_dir())


__all__ = ["ByteLevelBPETokenizer", "bundled_tokenizer_dir", "load_tokenizer"]
