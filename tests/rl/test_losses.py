"""Hand-computed checks of megatron_s1/rl/losses.py."""
import math

import pytest
import torch

from megatron_s1.rl import losses as L


def test_leave_one_out_matches_definition():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    a = L.leave_one_out_advantage(r)
    # A_0 = 1 - (0 + 0 + 1) / 3, A_1 = 0 - (1 + 0 + 1) / 3
    assert torch.allclose(a, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))
    assert torch.allclose(L.leave_one_out_advantage(torch.tensor([[3.0]])), torch.zeros(1, 1))


def test_grpo_advantage():
    a = L.grpo_advantage(torch.tensor([[1.0, 0.0], [2.0, 2.0]]), eps=0.0 + 1e-12)
    assert torch.allclose(a[0], torch.tensor([1.0, -1.0]), atol=1e-5)
    assert torch.allclose(a[1], torch.zeros(2))


def test_per_sequence_mean():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert L.per_sequence_mean(v, m).item() == pytest.approx((2.0 + 4.0) / 2)


def test_icepop_mask_bounds():
    lr = torch.log(torch.tensor([0.25, 0.05, 0.5]))
    lt = torch.log(torch.tensor([0.5, 0.5, 0.2]))  # rho = 2, 10, 0.4
    assert L.icepop_mask(lt, lr, 0.5, 5.0).tolist() == [1.0, 0.0, 0.0]


def test_icepop_loss_value_and_gradient():
    # one response, two tokens; token 2 has rho = 10 -> masked out.
    logp_old = torch.log(torch.tensor([[0.3, 0.5]]))
    logp_roll = torch.log(torch.tensor([[0.3, 0.05]]))
    logp_new = torch.log(torch.tensor([[0.6, 0.5]])).requires_grad_()
    adv = torch.tensor([1.5])
    loss, stats = L.icepop_loss(logp_new, logp_old, logp_roll, adv, torch.ones(1, 2), 0.5, 5.0, return_stats=True)
    # r = 0.6/0.3 = 2 on token 1: loss = -(1/2) * 2 * 1.5 * log 0.6
    assert loss.item() == pytest.approx(-(0.5) * 2 * 1.5 * math.log(0.6), rel=1e-5)
    loss.backward()
    assert torch.allclose(logp_new.grad, torch.tensor([[-0.5 * 2 * 1.5, 0.0]]))
    assert stats["icepop_masked_frac"] == pytest.approx(0.5)


def test_grpo_loss_clips():
    logp_old = torch.log(torch.tensor([[0.2]]))
    logp_new = torch.log(torch.tensor([[0.4]])).requires_grad_()  # r = 2 > 1.2
    loss = L.grpo_loss(logp_new, logp_old, torch.tensor([1.0]), torch.ones(1, 1), clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.2)
    loss.backward()
    assert logp_new.grad.item() == 0.0  # clipped side has no gradient


def test_oreal_loss_global_counts():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, 0.0], [-0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    positive = torch.tensor([True, False, False])
    loss = L.oreal_loss(logp, mask, positive)
    # positives: (1 + 2) / 2; negatives: (-3 - 0.5 - 0.5) / 3
    assert loss.item() == pytest.approx(1.5 - 4.0 / 3.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [1 / 3, 0.0], [1 / 3, 1 / 3]]))
    # explicit global counts (e.g. summed over data-parallel ranks) replace the local ones
    loss2 = L.oreal_loss(logp.detach(), mask, positive, num_pos_tokens=6, num_neg_tokens=4, neg_coef=0.5)
    assert loss2.item() == pytest.approx(3 / 6 + 0.5 * (-4.0) / 4)


def test_kl_cov_reading_and_selection():
    assert L.kl_cov_fraction(0.2) == pytest.approx(0.002)
    assert L.kl_cov_fraction(0.2, reading="fraction") == pytest.approx(0.2)
    logp_old = torch.tensor([[-1.0, -2.0], [-3.0, -6.0]])
    adv = torch.tensor([1.0, -1.0])
    # mean logp = -3, mean A = 0 -> cov = [2, 1, 0, 3]
    cov = L.token_covariance(logp_old, adv, torch.ones(2, 2))
    assert torch.allclose(cov, torch.tensor([[2.0, 1.0], [0.0, 3.0]]))
    logp_new = logp_old + torch.tensor([[0.5, 0.5], [0.5, -1.0]])
    pen, sel = L.kl_cov_penalty(logp_new, logp_old, adv, torch.ones(2, 2), fraction=0.25, coef=0.01)
    assert sel.tolist() == [[False, False], [False, True]]
    assert torch.allclose(pen, torch.tensor([[0.0, 0.0], [0.0, 0.01]]))
    _, sel = L.kl_cov_penalty(logp_new, logp_old, adv, torch.ones(2, 2), fraction=0.5)
    assert sel.tolist() == [[True, False], [False, True]]
    # a tiny fraction still selects one token; padding is never selected. Counted tokens: mean logp = -2,
    # mean A = 1/3 -> cov = [1 * 2/3, 0, (-1) * (-4/3)]
    _, sel = L.kl_cov_penalty(logp_new, logp_old, adv, torch.tensor([[1, 1], [1, 0]]), fraction=0.002)
    assert sel.tolist() == [[False, False], [True, False]]


def test_sampled_kl_zero_when_equal():
    lp = torch.log(torch.tensor([[0.3, 0.4]]))
    assert L.sampled_kl(lp, lp, torch.ones(1, 2)) == pytest.approx(0.0)
    assert L.sampled_kl(lp + 0.1, lp, torch.ones(1, 2)) == pytest.approx(math.exp(0.1) - 1.1, rel=1e-5)
