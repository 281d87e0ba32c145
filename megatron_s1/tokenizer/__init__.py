"""Tokenizers. `load_tokenizer(dir)` is the one factory the data pipeline uses.

Every tokenizer offers: encode(text) -> list[int], encode_batch(texts) -> list[list[int]],
decode(ids) -> str, vocab_size, eod_id.

A directory with domain SentencePiece models (Intern-S1 / Intern-S1-Pro format, or one written by
`megatron-s1 tokenizer build`) loads as a `DynamicTokenizer` (C++ fast path when built); a plain HF byte-level
BPE directory loads as a `ByteLevelBPETokenizer`.
"""
from megatron_s1.tokenizer.bpe import ByteLevelBPETokenizer, bundled_tokenizer_dir
from megatron_s1.tokenizer.compression import compression_rate
from megatron_s1.tokenizer.dynamic import DynamicTokenizer, UnbalancedTagError
from megatron_s1.tokenizer.layout import TokenizerLayoutError, is_dynamic_dir


def load_tokenizer(directory: str | None = None, **dynamic_kwargs):
    """Load the tokenizer in `directory` (default: the bundled demo tokenizer).

    `dynamic_kwargs` (backend, smiles_validator, on_unbalanced, num_threads) go to DynamicTokenizer.
    """
    directory = directory or bundled_tokenizer_dir()
    if is_dynamic_dir(directory):
        return DynamicTokenizer(directory, **dynamic_kwargs)
    return ByteLevelBPETokenizer(directory)


__all__ = ["ByteLevelBPETokenizer", "DynamicTokenizer", "TokenizerLayoutError", "UnbalancedTagError",
           "bundled_tokenizer_dir", "compression_rate", "is_dynamic_dir", "load_tokenizer"]
