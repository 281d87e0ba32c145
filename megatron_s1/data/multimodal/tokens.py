"""Media special tokens: looked up in the tokenizer, else reserved right after its vocabulary.

vision.arch=internvit (Intern-S1): `<img>`, `</img>`, `<IMG_CONTEXT>`; vision.arch=pro (Intern-S1-Pro):
`<|vision_start|>`, `<|vision_end|>`, `<|image_pad|>` and `<|video_pad|>` (the names the release's processor
looks up). Both: `<|ts|>`, `<|/ts|>`, `<TS_CONTEXT>` for time series. The released tokenizers have them as
added tokens; small test tokenizers usually do not. Missing ones get the ids vocab_size, vocab_size + 1, ...
in the order of the arch's token list (text never encodes to them), so `model.vocab_size` must cover them
(the task checks and says so). A tokenizer directory with a model config.json (the Pro release) also states
`vision_start_token_id`, `vision_end_token_id`, `image_token_id`, `video_token_id`: they must agree with the
tokenizer.
"""
from __future__ import annotations

import json
import os

from megatron_s1.config.schema import ConfigError
from megatron_s1.models.interns1.model import MediaTokenIds

_TS = (("ts_start", "<|ts|>"), ("ts_end", "<|/ts|>"), ("ts_context", "<TS_CONTEXT>"))
# MediaTokenIds field -> token, per vision.arch (reserved ids follow this order).
ARCH_TOKENS = {
    "internvit": (("img_start", "<img>"), ("img_end", "</img>"), ("img_context", "<IMG_CONTEXT>"), *_TS),
    "pro": (("img_start", "<|vision_start|>"), ("img_end", "<|vision_end|>"), ("img_context", "<|image_pad|>"),
            *_TS, ("video_context", "<|video_pad|>")),
}
MEDIA_TOKENS = tuple(token for _, token in ARCH_TOKENS["internvit"])
# model config.json key -> MediaTokenIds field (the Pro release's config.json).
_CONFIG_IDS = (("vision_start_token_id", "img_start"), ("vision_end_token_id", "img_end"),
               ("image_token_id", "img_context"), ("video_token_id", "video_context"))


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


def _config_ids(tokenizer) -> dict:
    """MediaTokenIds fields stated by a config.json beside the tokenizer files (the Pro release), if any."""
    path = os.path.join(getattr(tokenizer, "directory", None) or "", "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    return {field: int(config[key]) for key, field in _CONFIG_IDS if isinstance(config.get(key), int)}


def resolve_media_tokens(tokenizer, arch: str = "internvit") -> MediaTokenIds:
    if arch not in ARCH_TOKENS:
        raise ConfigError(f"vision.arch={arch!r}; choose internvit (Intern-S1) or pro (Intern-S1-Pro)")
    stated = _config_ids(tokenizer) if arch == "pro" else {}
    ids, next_id = {}, int(tokenizer.vocab_size)
    for field, token in ARCH_TOKENS[arch]:
        value = _lookup(tokenizer, token)
        if field in stated and value is not None and stated[field] != value:
            raise ConfigError(f"the tokenizer's {token} is id {value} but its directory's config.json says "
                              f"{stated[field]}; use the tokenizer and config.json of one release")
        if value is None:
            value = stated.get(field)
        if value is None:
            value, next_id = next_id, next_id + 1
        ids[field] = value
    return MediaTokenIds(**ids)


def media_tokens_for_model(tokenizer, vocab_size: int, arch: str = "internvit") -> MediaTokenIds:
    """resolve_media_tokens, checking that the model's embedding table covers the reserved ids."""
    media = resolve_media_tokens(tokenizer, arch)
    need = max(media.all()) + 1
    if vocab_size < need:
        raise ConfigError(f"model.vocab_size={vocab_size} does not cover the media tokens (ids up to {need - 1}, "
                          f"reserved after the tokenizer's vocabulary); set model.vocab_size >= {need}")
    return media
