"""Multimodal (text + images + time series) jsonl data for Intern-S1 CPT."""
from megatron_s1.data.multimodal.dataset import MultimodalJsonlDataset, collate, load_series
from megatron_s1.data.multimodal.tokens import MEDIA_TOKENS, resolve_media_tokens

__all__ = ["MEDIA_TOKENS", "MultimodalJsonlDataset", "collate", "load_series", "resolve_media_tokens"]
