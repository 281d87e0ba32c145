"""Square averaging (Intern-S1 Eq. 4) against hand-computed values, split as Megatron splits it."""
from __future__ import annotations

import math

import pytest
import torch

from megatron_s1.training.losses import (global_normaliser, sample_weights, square_average_weights,
                                         token_weights, weighted_token_loss)


def test_weights_hand_computed():
    assert square_average_weights([1, 4, 9, 0]) == [1.0, 0.5, pytest.approx(1 / 3), 0.0]
    d, n = global_normaliser([1, 4, 9])
    assert d == pytest.approx(1 + 2 + 3) and n == 14  # sum sqrt(l_i), sum l_i
    assert global_normaliser([1, 4, 9], "token") == (14.0, 14)


def _megatron_total(chunks):
    """What Megatron's per-token-loss mode optimises: sum of numerators / sum of (int) num_tokens."""
    num = sum(c[0] for c in chunks)
    den = sum(int(c[1]) for c in chunks)
    assert all(c[1].dtype == torch.int32 for c in chunks)
    return num / den


def test_global_normalisation_over_ranks_and_microbatches():
    # 4 samples with 1, 4, 9 and 2 loss tokens, per-token CE chosen by hand.
    ce = torch.zeros(4, 10)
    mask = torch.zeros(4, 10)
    lengths = [1, 4, 9, 2]
    values = [[2.0], [1.0, 1.0, 3.0, 3.0], [0.5] * 9, [4.0, 2.0]]
    for i, v in enumerate(values):
        ce[i, : len(v)] = torch.tensor(v)
        mask[i, : len(v)] = 1
    # Hand value: sum_i (1/sqrt(l_i)) * sum_j CE_ij / sum_i sqrt(l_i)
    #   = (2/1 + 8/2 + 4.5/3 + 6/sqrt 2) / (1 + 2 + 3 + sqrt 2) = (2 + 4 + 1.5 + 4.242641) / 7.414214
    expected = (2 + 4 + 1.5 + 6 / math.sqrt(2)) / (6 + math.sqrt(2))
    assert expected == pytest.approx(11.742641 / 7.414214, abs=1e-6)
    d, n = global_normaliser(lengths)
    w = torch.tensor(sample_weights(lengths))
    # DP=2 ranks x 2 micro-batches of 1 sample, DP=1 x 1 micro-batch of 4, DP=4 x 1: same objective.
    for splits in ([[0], [1], [2], [3]], [[0, 1, 2, 3]], [[0, 1], [2, 3]], [[3, 1], [0, 2]]):
        chunks = [weighted_token_loss(mask[s], w[s], d, n, ce[s]) for s in splits]
        total = _megatron_total(chunks)
        assert float(total) == pytest.approx(expected, rel=1e-6)
        reported = sum(c[2]["lm loss"] for c in chunks)
        assert float(reported[0] / reported[1]) == pytest.approx(expected, rel=1e-6)
    # A per-rank (local) normaliser would give a different value: the test can tell them apart.
    local = [weighted_token_loss(mask[s], w[s], *global_normaliser([lengths[i] for i in s]), ce[s])
             for s in ([0, 1], [2, 3])]
    assert float(_megatron_total(local)) != pytest.approx(expected, rel=1e-3)


def test_gradient_weights_per_token():
    lengths = [1, 4]
    ce = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1]])
    d, n = global_normaliser(lengths)
    num, count, _ = weighted_token_loss(mask, torch.tensor(sample_weights(lengths)), d, n, ce)
    (num / int(count)).backward()
    # d loss / d CE_ij = w_i / D: 1/3 for the 1-token sample, 0.5/3 for each token of the 4-token sample
    torch.testing.assert_close(ce.grad, torch.tensor([[1 / 3, 0, 0, 0], [1 / 6] * 4]))


def test_empty_batch_is_zero():
    num, count, rep = weighted_token_loss(torch.zeros(1, 3), torch.zeros(1), 0.0, 0, torch.ones(1, 3))
    assert float(num) == 0 and int(count) == 0


def test_packed_row_weights_per_token():
    """A packed row of samples with 1 and 4 loss tokens (plus padding) gives the numerator of the same two
    samples as rows: each token carries its own sample's weight."""
    cu = torch.tensor([0, 2, 6, 8], dtype=torch.int32)  # sample 0: 2 tokens (1 loss token), sample 1: 4, padding
    w = token_weights(cu, sample_weights([1, 4]))
    torch.testing.assert_close(w, torch.tensor([[1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0]]))
    ce = torch.tensor([[9.0, 2.0, 1.0, 1.0, 3.0, 3.0, 7.0, 7.0]])
    mask = torch.tensor([[0.0, 1, 1, 1, 1, 1, 0, 0]])
    d, n = global_normaliser([1, 4])
    packed = weighted_token_loss(mask, w, d, n, ce)
    rows = weighted_token_loss(torch.tensor([[0.0, 1, 0, 0], [1, 1, 1, 1]]), torch.tensor(sample_weights([1, 4])), d, n,
                               torch.tensor([[9.0, 2.0, 0, 0], [1.0, 1.0, 3.0, 3.0]]))
    assert float(packed[0]) == pytest.approx(float(rows[0])) and int(packed[1]) == int(rows[1]) == 5
    assert float(packed[0] / packed[1]) == pytest.approx((2.0 + 8.0 / 2) / 3)  # sum_i w_i sum_j CE_ij / sum sqrt(l_i)
