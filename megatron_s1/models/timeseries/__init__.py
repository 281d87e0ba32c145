"""Intern-S1 time-series encoder: adaptive patching + Whisper-style encoder + projector."""
from megatron_s1.models.timeseries.encoder import (TimeSeriesModel, adaptive_stride, num_patches,
                                                   num_timeseries_tokens, znormalize)

__all__ = ["TimeSeriesModel", "adaptive_stride", "num_patches", "num_timeseries_tokens", "znormalize"]
