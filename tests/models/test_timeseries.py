"""Time-series encoder: the sigmoid stride rule by hand, token counts from 1 point to 1e6, z-norm, loading."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from megatron_s1.config.schema import load_config
from megatron_s1.models.timeseries import (TimeSeriesModel, adaptive_stride, num_patches, num_timeseries_tokens,
                                           znormalize)


def test_stride_rule_hand_computed():
    # stride = floor(160 / (1 + exp(-sr/100))^6)
    # sr=100: 1 + e^-1 = 1.3678794; ^6 = 6.5566; 160 / 6.5566 = 24.40 -> 24
    assert adaptive_stride(100) == 24
    # sr=50: 1 + e^-0.5 = 1.6065307; ^6 = 17.193; 160 / 17.193 = 9.31 -> 9
    assert adaptive_stride(50) == 9
    # sr=250: 1 + e^-2.5 = 1.0820850; ^6 = 1.60535; 160 / 1.60535 = 99.67 -> 99
    assert adaptive_stride(250) == 99
    # sr=0: 2^6 = 64; 160 / 64 = 2.5 -> 2;  sr -> inf: 160 (minus rounding: 159 at 1 kHz)
    assert adaptive_stride(0) == 2
    assert adaptive_stride(1000) == 159
    assert adaptive_stride(1e6) == 160


def test_patch_and_token_counts_by_hand():
    # sr=100: s=24, p=48. L=1000: ceil((1000-48)/24)+1 = 40+1 = 41 patches; concat -> 20; conv s2 -> 10
    assert num_patches(1000, 100) == 41
    assert num_timeseries_tokens(1000, 100) == 10
    # L=1 pads to p+s=72: ceil(24/24)+1 = 2 patches -> 1 frame -> 1 token
    assert num_patches(1, 100) == 2 and num_timeseries_tokens(1, 100) == 1
    # 1e6 points at 1 kHz: s=159, p=318: ceil((1e6-318)/159)+1 = 6288+1 = 6289 -> 3144 -> 1572
    assert num_patches(10**6, 1000) == 6289 and num_timeseries_tokens(10**6, 1000) == 1572


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = load_config(None, ["timeseries.preset=tiny-ts"]).timeseries
    return TimeSeriesModel(cfg, llm_hidden=24).eval()


@pytest.mark.parametrize("length,sr,channels", [(1, 1.0, 1), (2, 10.0, 2), (7, 100.0, 3), (100, 50.0, 1),
                                                (1000, 100.0, 4), (200_000, 1000.0, 1)])
def test_forward_token_count_matches_prompt_expansion(tiny_model, length, sr, channels):
    with torch.no_grad():
        out = tiny_model([torch.randn(length, channels)], [sr])
    assert out.shape == (num_timeseries_tokens(length, sr), 24)
    assert torch.isfinite(out).all()


def test_batch_of_series_concatenates_in_order(tiny_model):
    a, b = torch.randn(300, 2), torch.randn(50, 1)
    with torch.no_grad():
        both = tiny_model([a, b], [100.0, 10.0])
        only_b = tiny_model([b], [10.0])
    assert both.shape[0] == num_timeseries_tokens(300, 100) + num_timeseries_tokens(50, 10)
    torch.testing.assert_close(both[-only_b.shape[0]:], only_b)


def test_one_million_points_count():
    # Forward at 1e6 points takes ~15 s on a CPU core; the count path is exercised here, the forward above
    # runs the same code at 2e5 points.
    assert num_timeseries_tokens(10**6, 100) == math.ceil((((10**6 - 48 + 23) // 24 + 1) // 2) / 2)


def test_znormalize_per_channel():
    x = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]])
    z = znormalize(x)
    torch.testing.assert_close(z[:, 0], torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(z[:, 1], torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)
    assert torch.equal(z[:, 2], torch.zeros(2))  # constant channel


def test_load_npy_and_csv(tmp_path):
    from megatron_s1.data.multimodal import load_series

    arr = np.stack([np.arange(6.0), np.arange(6.0) * 2], 1)
    np.save(tmp_path / "a.npy", arr)
    np.savetxt(tmp_path / "b.csv", arr, delimiter=",", header="x,y", comments="")
    np.savetxt(tmp_path / "c.csv", arr[:, 0], delimiter=",")
    a, b, c = (load_series(str(tmp_path / n)) for n in ("a.npy", "b.csv", "c.csv"))
    assert a.shape == b.shape == (6, 2) and c.shape == (6, 1)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:, 0], a[:, 1])  # z-normalised per channel
