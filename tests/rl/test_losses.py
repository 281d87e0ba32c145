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


def test_grpo_advantage_unbiased_std_by_default():
    # R = [1, 0, 0]: mean 1/3, squared deviations 4/9 + 1/9 + 1/9 = 2/3;
    # unbiased std sqrt((2/3) / 2) = 0.57735, population std sqrt((2/3) / 3) = 0.47140
    r = torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    a = L.grpo_advantage(r, eps=0.0)
    assert torch.allclose(a[0], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / math.sqrt(1 / 3), atol=1e-6)
    assert a[0, 0].item() == pytest.approx(1.154701, abs=1e-6)
    assert torch.equal(L.grpo_advantage(r)[1], torch.zeros(3))  # all-equal group: 0 / (0 + eps)
    pop = L.grpo_advantage(r, eps=0.0, unbiased=False)
    assert pop[0, 0].item() == pytest.approx(1.414214, abs=1e-6)
    assert torch.allclose(L.group_advantages(r, "grpo"), L.grpo_advantage(r))
    assert torch.allclose(L.group_advantages(r, "grpo", std="population"), L.grpo_advantage(r, unbiased=False))
    assert torch.equal(L.grpo_advantage(torch.tensor([[1.0]])), torch.zeros(1, 1))  # G = 1: no std
    with pytest.raises(ValueError, match="unbiased or population"):
        L.group_advantages(r, "grpo", std="sample")


def test_per_sequence_mean():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert L.per_sequence_mean(v, m).item() == pytest.approx((2.0 + 4.0) / 2)


def test_icepop_mask_is_rho_on_the_open_interval():
    lr = torch.log(torch.tensor([0.25, 0.05, 0.5]))
    lt = torch.log(torch.tensor([0.5, 0.5, 0.2]))  # rho = 2, 10, 0.4
    assert torch.allclose(L.icepop_mask(lt, lr, 0.5, 5.0), torch.tensor([2.0, 0.0, 0.0]))
    # open interval: rho exactly at alpha or beta is dropped
    same = torch.log(torch.tensor([0.3]))  # rho = 1 exactly
    assert L.icepop_mask(same, same, 1.0, 5.0).item() == 0.0
    assert L.icepop_mask(same, same, 0.5, 1.0).item() == 0.0
    assert L.icepop_mask(same, same, 0.5, 5.0).item() == 1.0


def test_icepop_loss_value_and_gradient_carry_rho():
    # row 0 (A = 1.5, 3 tokens): rho = 0.3/0.2 = 1.5 (kept), 0.5/0.05 = 10 (dropped), 0.2/0.4 = 0.5 (dropped: the
    # interval is open); r = 0.6/0.3 = 2 on token 0. Row 1 (A = -1, 1 token): rho = 0.4/0.5 = 0.8, r = 0.2/0.4 = 0.5.
    logp_old = torch.log(torch.tensor([[0.3, 0.5, 0.2], [0.4, 0.5, 0.5]]))
    logp_roll = torch.log(torch.tensor([[0.2, 0.05, 0.4], [0.5, 0.5, 0.5]]))
    logp_new = torch.log(torch.tensor([[0.6, 0.5, 0.1], [0.2, 0.5, 0.5]])).requires_grad_()
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.5, -1.0])
    loss, stats = L.icepop_loss(logp_new, logp_old, logp_roll, adv, mask, 0.5, 5.0, return_stats=True)
    # J = 1/2 [ 1/3 (1.5 * 2) * 1.5 * log 0.6 + (0.8 * 0.5) * (-1) * log 0.2 ]
    assert loss.item() == pytest.approx(-0.5 * (1.5 * math.log(0.6) - 0.4 * math.log(0.2)), rel=1e-5)
    loss.backward()
    # -1/2 * 1/3 * 3 * 1.5 = -0.75 and -1/2 * 0.4 * (-1) = 0.2 (the M = 1 formula gives -0.5 and 0.25)
    assert torch.allclose(logp_new.grad, torch.tensor([[-0.75, 0.0, 0.0], [0.2, 0.0, 0.0]]), atol=1e-6)
    assert stats["icepop_masked"] == 2 and stats["icepop_tokens"] == 4 and stats["icepop_kept"] == 2
    assert stats["icepop_rho_min"] == pytest.approx(0.8) and stats["icepop_rho_max"] == pytest.approx(1.5)
    assert stats["icepop_rho_sum"] / stats["icepop_kept"] == pytest.approx(1.15)


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


def test_kl_cov_fraction_readings_and_covariance():
    assert L.kl_cov_fraction(0.2) == pytest.approx(0.002)
    assert L.kl_cov_fraction(0.2, reading="fraction") == pytest.approx(0.2)
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -6.0]])
    # mean logp = -3, mean A = 0 -> cov = [2, 1, 0, 3]
    cov = L.token_covariance(logp, torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    assert torch.allclose(cov, torch.tensor([[2.0, 1.0], [0.0, 3.0]]))


# Two responses of 3 and 2 counted tokens (the last position of row 1 is padding), A = [1, -1].
KL_OLD = torch.tensor([[-1.0, -2.0, -1.0], [-3.0, -6.0, 0.0]])
KL_NEW = torch.tensor([[-1.0, -0.5, -1.0], [-3.5, -3.0, 5.0]])  # |new - old| = [0, 1.5, 0 | 0.5, 3, (5 pad)]
KL_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
KL_ADV = torch.tensor([1.0, -1.0])


def test_kl_cov_ranks_by_current_policy_and_takes_the_token_mean():
    # Cov with the current log-probs: mean = -9/5 = -1.8, mean A = 1/5 -> (lp + 1.8) * (A - 0.2) =
    # [0.64, 1.04, 0.64 | 2.04, 1.44]: the top token (k = floor(0.2 * 5) = 1) is row 1, position 0.
    # (Ranked by pi_old: mean -2.6 -> [1.28, 0.48, 1.28 | 0.48, 4.08]: row 1, position 1 instead.)
    logp_new = KL_NEW.clone().requires_grad_()
    pen, stats = L.kl_cov_penalty(logp_new, KL_OLD, KL_ADV, KL_MASK, fraction=0.2, coef=0.1)
    # token mean over the 5 response tokens: 0.1 * 0.5 / 5 (ranking by pi_old: 0.1 * 3 / 5 = 0.06;
    # per-sequence mean: 1/2 * 0.1 * 0.5 / 2 = 0.0125)
    assert pen.item() == pytest.approx(0.01)
    pen.backward()
    expected = torch.zeros(2, 3)
    expected[1, 0] = -0.1 / 5  # d|x|/dx = sign(x), x = -0.5 (per-sequence mean: -0.025)
    assert torch.allclose(logp_new.grad, expected)
    assert stats == {"kl_cov_selected": 1.0, "kl_cov_tokens": 5.0, "kl_cov_abs_sum": pytest.approx(0.5)}
    # the global token count of the mini-batch (data parallelism) replaces the local one
    pen, _ = L.kl_cov_penalty(KL_NEW, KL_OLD, KL_ADV, KL_MASK, fraction=0.2, coef=0.1, num_tokens=10)
    assert pen.item() == pytest.approx(0.005)
    # fraction 0.4 -> k = 2: rows 1 positions 0 and 1; fraction 1: every counted token, never the padding
    _, stats = L.kl_cov_penalty(KL_NEW, KL_OLD, KL_ADV, KL_MASK, fraction=0.4)
    assert stats["kl_cov_selected"] == 2 and stats["kl_cov_abs_sum"] == pytest.approx(3.5)
    _, stats = L.kl_cov_penalty(KL_NEW, KL_OLD, KL_ADV, KL_MASK, fraction=1.0)
    assert stats["kl_cov_selected"] == 5 and stats["kl_cov_abs_sum"] == pytest.approx(5.0)
    # a tiny fraction still selects one token
    _, stats = L.kl_cov_penalty(KL_NEW, KL_OLD, KL_ADV, KL_MASK, fraction=0.002)
    assert stats["kl_cov_selected"] == 1


def test_kl_cov_is_zero_with_zero_gradient_on_the_first_mini_batch():
    logp_new = KL_OLD.clone().requires_grad_()  # pi_new = pi_old before any update of the rollout
    pen, stats = L.kl_cov_penalty(logp_new, KL_OLD, KL_ADV, KL_MASK, fraction=0.4, coef=1.0)
    pen.backward()
    assert pen.item() == 0.0 and stats["kl_cov_selected"] == 2
    assert torch.count_nonzero(logp_new.grad) == 0


# OREAL options. Responses: one positive (2 tokens), two negatives (1 and 2 tokens), A = [0.5, -0.25, -1].
OR_LOGP = [[-1.0, -2.0], [-3.0, 0.0], [-0.5, -0.5]]
OR_MASK = torch.tensor([[1, 1], [1, 0], [1, 1]])
OR_POS = torch.tensor([True, False, False])
OR_ADV = torch.tensor([0.5, -0.25, -1.0])


def test_oreal_official_options():
    logp = torch.tensor(OR_LOGP, requires_grad=True)
    loss = L.oreal_loss(logp, OR_MASK, OR_POS, neg_coef=0.5, pos_coef=2.0, advantages=OR_ADV,
                        weight_positives=True, weight_negatives=True)
    # positives: 2 * 0.5 * (1 + 2) / 2 = 1.5; negatives: -0.5 * [(-0.25)(-3) + (-1)(-0.5 - 0.5)] / 3 = -0.875 / 3
    assert loss.item() == pytest.approx(1.5 - 0.875 / 3)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, -0.5], [0.5 * 0.25 / 3, 0.0], [0.5 / 3, 0.5 / 3]]))
    # each option alone: advantage-weighted positives only (negatives keep reward -1, eta = 1)
    only_pos = L.oreal_loss(torch.tensor(OR_LOGP), OR_MASK, OR_POS, advantages=OR_ADV, weight_positives=True)
    assert only_pos.item() == pytest.approx(0.5 * 3 / 2 - 4.0 / 3.0)
    only_neg = L.oreal_loss(torch.tensor(OR_LOGP), OR_MASK, OR_POS, advantages=OR_ADV, weight_negatives=True)
    assert only_neg.item() == pytest.approx(1.5 - 1.75 / 3)
    with pytest.raises(ValueError, match="advantages"):
        L.oreal_loss(torch.tensor(OR_LOGP), OR_MASK, OR_POS, weight_positives=True)


def test_reference_kl_k3():
    logp = torch.log(torch.tensor([[0.5, 0.3]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.3]]))
    kl = L.reference_kl(logp, ref, torch.tensor([[1, 1]]), coef=0.1)
    # token 0: d = log(0.25 / 0.5): exp(d) - d - 1 = 0.5 + log 2 - 1 (k1 would give log 2, k2 (log 2)^2 / 2);
    # token 1: pi = pi_ref -> 0 with zero gradient. Token mean over 2.
    assert kl.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1) / 2)
    kl.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.1 * (1 - 0.5) / 2, 0.0]]))


def test_oreal_xtuner_variant():
    # A = [1, -0.5, -0.5]; r = pi_new / pi_old: row 0 [1.1, 1.5], row 1 [0.5, 0.95], row 2 [4]
    old = torch.log(torch.tensor([[0.5, 0.4], [0.2, 0.2], [0.1, 0.5]]))
    new = torch.log(torch.tensor([[0.55, 0.6], [0.1, 0.19], [0.4, 0.5]])).requires_grad_()
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    adv = torch.tensor([1.0, -0.5, -0.5])
    loss = L.oreal_xtuner_loss(new, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
    # surrogates s: 1.1, min(1.5, 1.2) = 1.2 | min(-0.25, -0.4) = -0.4, -0.475 | dual clip max(-2, -1.5) = -1.5
    # positives (A > 0, N+ = 2): 1/2 [(-log 0.55 - 1.1) + (-log 0.6 - 1.2)]; negatives (N- = 3): -(1/3) * (-2.375)
    expected = 0.5 * (-math.log(0.55) - 1.1 - math.log(0.6) - 1.2) + 2.375 / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # d/dlogp: -1 - r A / N+ where unclipped; clipped tokens only keep the BC part (positives) or 0
    assert torch.allclose(new.grad, torch.tensor([[0.5 * (-1 - 1.1), -0.5], [0.0, 0.95 * 0.5 / 3], [0.0, 0.0]]),
                          atol=1e-6)
    # factors and global counts
    scaled = L.oreal_xtuner_loss(new.detach(), old, adv, mask, num_pos_tokens=4, num_neg_tokens=6, pos_coef=2.0,
                                 neg_coef=0.5, dual_clip=None)
    no_dual = -0.4 - 0.475 - 2.0  # row 2 unclipped by the dual bound: r A = -2
    assert scaled.item() == pytest.approx(2.0 * (-math.log(0.55) - 1.1 - math.log(0.6) - 1.2) / 4
                                          - 0.5 * no_dual / 6, rel=1e-5)
    assert L.oreal_positive("xtuner", torch.tensor([True, True, False]), adv).tolist() == [True, False, False]
    assert L.oreal_positive("paper", torch.tensor([True, True, False]), adv).tolist() == [True, True, False]


def test_sampled_kl_zero_when_equal():
    lp = torch.log(torch.tensor([[0.3, 0.4]]))
    assert L.sampled_kl(lp, lp, torch.ones(1, 2)) == pytest.approx(0.0)
    assert L.sampled_kl(lp + 0.1, lp, torch.ones(1, 2)) == pytest.approx(math.exp(0.1) - 1.1, rel=1e-5)
