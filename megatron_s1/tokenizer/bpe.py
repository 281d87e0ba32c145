"""HF byte-level BPE tokenizer directories (Qwen2/Qwen3 format) loaded into tiktoken's native BPE.

A directory holds `vocab.json` (token -> id, tokens in GPT-2's byte-to-unicode alphabet), `merges.txt`
and optionally `tokenizer_config.json` / `added_tokens.json` with added and special tokens. Qwen's vocabulary
ids follow the merge order, so an id is directly the tiktoken merge rank.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Iterable

import tiktoken

# Qwen2/Qwen3 pre-tokenizer: contractions, letter runs with one leading non-letter, single digits,
# punctuation runs, newlines, whitespace.
QWEN2_PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable stand-ins for the 256 byte values."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    mapping = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[chr(b)] = b
        else:
            mapping[chr(256 + extra)] = b
            extra += 1
    return mapping


def byte_level_to_bytes(token: str) -> bytes:
    table = unicode_to_byte()
    try:
        return bytes(table[ch] for ch in token)
    except KeyError as err:
        raise ValueError(f"vocab token {token!r} is not in the byte-level alphabet ({err}); "
                         "is this a byte-level BPE vocab.json?") from None


def read_added_tokens(directory: str) -> dict[str, int]:
    added: dict[str, int] = {}
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        for token_id, entry in (config.get("added_tokens_decoder") or {}).items():
            added[entry["content"]] = int(token_id)
    added_path = os.path.join(directory, "added_tokens.json")
    if os.path.exists(added_path):
        with open(added_path, encoding="utf-8") as f:
            added.update({k: int(v) for k, v in json.load(f).items()})
    return added


def read_vocab(directory: str) -> dict[str, int]:
    vocab_path = os.path.join(directory, "vocab.json")
    if not os.path.exists(vocab_path):
        raise FileNotFoundError(f"tokenizer directory {directory!r} has no vocab.json; point data.tokenizer "
                                "at an HF byte-level BPE directory (vocab.json + merges.txt)")
    if not os.path.isfile(os.path.join(directory, "merges.txt")):
        # The ranks come from vocab.json (Qwen ids follow the merge order), but a directory without its merges
        # is incomplete (a partial copy, or another tokenizer family whose ids need not follow any merge order).
        raise FileNotFoundError(f"tokenizer directory {directory!r} has no merges.txt; copy the model's complete "
                                "tokenizer directory (vocab.json + merges.txt)")
    with open(vocab_path, encoding="utf-8") as f:
        return json.load(f)


class ByteLevelBPETokenizer:
    """Encode/decode with an HF byte-level BPE directory through tiktoken.

    Added tokens (special or not) are matched literally before BPE, as HF does. `vocab` replaces the
    directory's vocab.json (the dynamic tokenizer passes it without the domain placeholders).
    """

    def __init__(self, directory: str, vocab: dict[str, int] | None = None):
        if vocab is None:
            vocab = read_vocab(directory)
        self.directory = directory
        self.added_tokens = read_added_tokens(directory)
        ranks = {}
        for token, token_id in vocab.items():
            if token in self.added_tokens:
                continue
            ranks[byte_level_to_bytes(token)] = token_id
        self._encoding = tiktoken.Encoding(
            name=os.path.basename(os.path.abspath(directory)),
            pat_str=QWEN2_PRETOKENIZE_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.added_tokens,
        )
        self.vocab_size = max(max(ranks.values()), max(self.added_tokens.values(), default=-1)) + 1
        self.eod_id = self._pick_eod()

    def _pick_eod(self) -> int:
        for candidate in ("<|endoftext|>", "<|im_end|>", "</s>"):
            if candidate in self.added_tokens:
                return self.added_tokens[candidate]
        raise ValueError(f"tokenizer {self.directory!r} defines no end-of-document token "
                         "(<|endoftext|>, <|im_end|> or </s>); add one to tokenizer_config.json")

    def encode(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special="all")

    def encode_batch(self, texts: Iterable[str], num_threads: int = 8) -> list[list[int]]:
        return self._encoding.encode_batch(list(texts), num_threads=num_threads, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        return self._encoding.decode(list(ids))


def bundled_tokenizer_dir() -> str:
    """The small tokenizer trained on the bundled corpus (demo and tests)."""
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "corpus", "tokenizer")
