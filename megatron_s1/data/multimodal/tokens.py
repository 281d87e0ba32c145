"""Media special tokens: looked up in the tokenizer, else reserved right after its vocabulary.

The released Intern-S1 tokenizer has `<img>`, `</img>`, `<IMG_CONTEXT>`, `<|ts|>`, `<|/ts|>`,
`<TS_CONTEXT>` as added tokens; small test tokenizers usually do not. Missing ones get the ids
vocab_size, vocab_size + 1, ... in the order of MEDIA_TOKENS (text never encodes to them), so
`model.vocab_size` must cover them (the task checks and says so).
"""
from __future__ import annotations

from megatron_s1.config.schema import ConfigError
from megatron_s1.models.interns1.model import MediaTokenIds

MEDIA_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<|ts|>", "<|/ts|>", "<TS_CONTEXT>")
_FIELDS = ("img_start", "img_end", "img_context", "ts_start", "ts_end", "ts_context")


def _lookup(tokenizer, token: str):
    added = getattr(tokenizer, "added_tokens", None)
    if isinstance(added, dict) and token in added:
        return int(added[token])
    for attr in ("token_to_id", "convert_tokens_to_ids"):
        fn = getattr(tokenizer, attr, None)
        if callable(fn):
            try:
                value = fn(token)
            except Exception:  # noqa: BLE001 - tokenizers differ in how they report unknown tokens
                value = None
            if isinstance(value, int) and value >= 0 and value != getattr(tokenizer, "unk_token_id", -1):
                return value
    return None


def resolve_media_tokens(tokenizer) -> MediaTokenIds:
    ids, next_id = {}, int(tokenizer.vocab_size)
    for field, token in zip(_FIELDS, MEDIA_TOKENS):
        value = _lookup(tokenizer, token)
        if value is None:
            value, next_id = next_id, next_id + 1
        ids[field] = value
    return MediaTokenIds(**ids)


def media_tokens_for_model(tokenizer, vocab_size: int) -> MediaTokenIds:
    """resolve_media_tokens, checking that the model's embedding table covers the reserved ids."""
    media = resolve_media_tokens(tokenizer)
    need = max(media.all()) + 1
    if vocab_size < need:
        raise ConfigError(f"model.vocab_size={vocab_size} does not cover the media tokens (ids up to {need - 1}, "
                          f"reserved after the tokenizer's vocabulary); set model.vocab_size >= {need}")
    return media
