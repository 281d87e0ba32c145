"""SFT mixtures: ratios, epochs, held-out isolation, reproducibility."""
from __future__ import annotations

import numpy as np
import pytest

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.chat.mixture import Mixture, draw, mixture_counts, parse_specs


def test_ratios_give_exact_shares():
    specs = parse_specs([{"path": "a.jsonl", "ratio": 3}, {"path": "b.jsonl", "ratio": 1}])
    mix = Mixture(specs, [100, 1000], "100,0,0", seed=1, mixture_samples=400)
    assert mix.counts == [300, 100]
    d = mix.train[:, 0]
    assert (d == 0).sum() == 300 and (d == 1).sum() == 100
    info = mix.describe()
    assert [x["share"] for x in info["datasets"]] == [0.75, 0.25]
    assert info["datasets"][0]["passes"] == 3.0  # a small dataset is repeated in whole passes
    # Every conversation of dataset a is used exactly 3 times.
    assert np.all(np.bincount(mix.train[d == 0, 1], minlength=100) == 3)


def test_epochs_and_default_total():
    specs = parse_specs([{"path": "a.jsonl", "epochs": 2}, {"path": "b.jsonl", "epochs": 0.5}])
    mix = Mixture(specs, [50, 40], "100,0,0", seed=0)
    assert mix.counts == [100, 20]
    assert len(set(mix.train[mix.train[:, 0] == 1, 1].tolist())) == 20  # half a pass: no repeats
    # Ratios without mixture_samples: the total is the epochs-based size.
    specs = parse_specs([{"path": "a.jsonl", "epochs": 2}, {"path": "b.jsonl", "epochs": 0.5}], ratios=[1, 1])
    assert mixture_counts(specs, [50, 40], None) == [60, 60]


def test_largest_remainder_sums_exactly():
    specs = parse_specs(["a", "b", "c"], ratios=[1, 1, 1])
    assert sum(mixture_counts(specs, [10, 10, 10], 100)) == 100


def test_reproducible_and_seed_dependent():
    specs = parse_specs([{"path": "a.jsonl", "ratio": 2}, {"path": "b.jsonl", "ratio": 1}])
    a = Mixture(specs, [30, 30], "80,20,0", seed=5, mixture_samples=90)
    b = Mixture(specs, [30, 30], "80,20,0", seed=5, mixture_samples=90)
    c = Mixture(specs, [30, 30], "80,20,0", seed=6, mixture_samples=90)
    assert np.array_equal(a.train, b.train) and a.describe()["sha256"] == b.describe()["sha256"]
    assert a.describe()["sha256"] != c.describe()["sha256"]


def test_held_out_never_trained():
    specs = parse_specs([{"path": "a.jsonl", "epochs": 3}, {"path": "b.jsonl"}])
    mix = Mixture(specs, [40, 20], "90,10,0", seed=3)
    train = {tuple(x) for x in mix.train.tolist()}
    valid = {tuple(x) for x in mix.valid.tolist()}
    assert valid and not (train & valid)
    assert len(valid) == 4 + 2


def test_draw_walks_whole_passes():
    out = draw(np.arange(7), 20, np.random.default_rng(0))
    assert np.all(np.bincount(out[:14], minlength=7) == 2)


def test_spec_errors():
    with pytest.raises(ConfigError, match="every"):
        parse_specs([{"path": "a", "ratio": 1}, {"path": "b"}])
    with pytest.raises(ConfigError, match="sft.ratios has 1"):
        parse_specs(["a", "b"], ratios=[1])
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_specs([{"path": "a", "weight": 1}])
    with pytest.raises(ConfigError, match="needs sft.datasets"):
        parse_specs([])
