"""Grouped routing (Pro §2.1) and STE (Pro Eq. 2-3): hand-computed values, balance, gradients."""
import math

import pytest
import torch

from megatron_s1.models.pro.routing import (grouped_topk, grouped_topk_routing, ste_routing_weights,
                                            tokens_per_group)


def test_grouped_routing_hand_computed():
    # E=4, K=2, G=2: groups {0,1} and {2,3}. Plain top-2 would pick experts 2 and 3.
    logits = torch.tensor([[1.0, 2.0, 4.0, 3.0]])
    w, idx = grouped_topk_routing(logits, topk=2, num_groups=2)
    assert idx.tolist() == [[1, 2]]
    # Renormalised softmax over the chosen logits {2, 4}.
    e = math.exp(2.0)
    torch.testing.assert_close(w, torch.tensor([[1 / (1 + e), e / (1 + e)]]))
    # Without renormalisation: the dense softmax values.
    w_raw, _ = grouped_topk_routing(logits, topk=2, num_groups=2, norm_topk_prob=False)
    z = sum(math.exp(v) for v in (1.0, 2.0, 4.0, 3.0))
    torch.testing.assert_close(w_raw, torch.tensor([[math.exp(2.0) / z, math.exp(4.0) / z]]))


def test_one_group_is_plain_topk():
    logits = torch.randn(64, 16)
    w, idx = grouped_topk_routing(logits, topk=4, num_groups=1)
    ref_vals, ref_idx = torch.softmax(logits, -1).topk(4, dim=-1)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(w, ref_vals / ref_vals.sum(-1, keepdim=True))


@pytest.mark.parametrize("ep", [2, 4, 8])
def test_exact_balance_per_ep_rank(ep):
    """G = EP: every EP rank receives exactly T*K/EP assignments, even with a heavily skewed router."""
    torch.manual_seed(ep)
    num_experts, topk, tokens = 32, 8, 1000
    logits = torch.randn(tokens, num_experts)
    logits[:, :num_experts // ep] += 5.0  # everything prefers rank 0's experts
    _, idx = grouped_topk_routing(logits, topk, num_groups=ep)
    routing_map = torch.zeros(tokens, num_experts, dtype=torch.bool).scatter(1, idx, True)
    per_rank = tokens_per_group(routing_map, ep)  # experts [r*E/EP, (r+1)*E/EP) live on EP rank r
    assert per_rank.tolist() == [tokens * topk // ep] * ep
    _, plain = torch.softmax(logits, -1).topk(topk, dim=-1)
    plain_map = torch.zeros(tokens, num_experts, dtype=torch.bool).scatter(1, plain, True)
    assert len(set(tokens_per_group(plain_map, ep).tolist())) > 1  # plain top-K is not balanced
    # Simulated EP: tokens of EP source ranks routed independently still land evenly on every target rank.
    received = sum(tokens_per_group(routing_map[r::ep], ep) for r in range(ep))
    assert received.tolist() == per_rank.tolist()


def test_ste_forward_is_exact_and_backward_dense():
    # z = log([1, 2, 3, 4]) -> p = [0.1, 0.2, 0.3, 0.4]; top-2 = experts 3, 2.
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).requires_grad_(True)
    w, idx = grouped_topk_routing(logits, topk=2, num_groups=1)
    w_ste = ste_routing_weights(logits, idx, w, temperature=1.0)
    assert torch.equal(w_ste, w)  # Eq. 2: forward identical to plain top-K, bit for bit
    assert idx.tolist() == [[3, 2]]
    w_ste[0, 0].backward()  # L = weight of expert 3
    # Eq. 3: dL/dz_i = p_3 (1[i=3] - p_i) = 0.4 * ([0, 0, 0, 1] - [0.1, 0.2, 0.3, 0.4])
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.04, -0.08, -0.12, 0.24]]))
    assert (logits.grad[0, :2] != 0).all()  # non-selected experts get gradient


def test_plain_topk_gives_no_gradient_to_unselected():
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).requires_grad_(True)
    w, _ = grouped_topk_routing(logits, topk=2, num_groups=1)
    w[0, 0].backward()
    # Renormalised top-K weights depend on the selected logits only (zero up to rounding).
    assert logits.grad[0, :2].abs().max() < 1e-6 and logits.grad[0, 2:].abs().min() > 0.1


def test_ste_temperature():
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0]])).requires_grad_(True)
    w, idx = grouped_topk_routing(logits, topk=2, num_groups=1)
    ste_routing_weights(logits, idx, w, temperature=2.0)[0, 0].backward()
    # p = softmax(z / 2) = sqrt([1, 2, 3, 4]) / sum; grad = (1/2) p_3 (1[i=3] - p_i)
    s = [math.sqrt(v) for v in (1, 2, 3, 4)]
    p = [v / sum(s) for v in s]
    expected = [0.5 * p[3] * ((i == 3) - p[i]) for i in range(4)]
    torch.testing.assert_close(logits.grad, torch.tensor([expected]))
    with pytest.raises(ValueError):
        ste_routing_weights(logits, idx, w, temperature=0.0)


def test_grouped_topk_rejects_bad_groups():
    with pytest.raises(ValueError):
        grouped_topk(torch.randn(2, 6), topk=2, num_groups=4)
