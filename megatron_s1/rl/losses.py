"""RL objectives of Intern-S1 / Intern-S1-Pro, each written from its paper equation.

Shapes: token tensors are ``[N, T]`` (N responses, T response positions), ``mask`` is 1 on response tokens
that count (0 on padding / prompt). Group tensors of rewards are ``[P, G]`` (P prompts, G samples each).
Log-probs are natural-log probabilities of the sampled tokens.

References
- [S1]   Intern-S1 technical report (arXiv:2508.15763), RL section: OREAL + KL-Cov.
- [Pro]  Intern-S1-Pro report: IcePop dual importance sampling (Eq. 4-5), leave-one-out baseline (Eq. 6),
         per-sequence 1/|y_i| normalisation, mean over the G samples.
- [OREAL] Lyu et al. 2025, "Exploring the Limit of Outcome Reward for Learning Mathematical Reasoning"
         (arXiv:2502.06781): behaviour cloning on positive (best-of-N) samples + reward-shaped policy
         gradient on negatives, each averaged over its own token count.
- [KLCov] Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning Language Models" (arXiv:2505.22617),
         Eq. for Cov(log pi, A) and the KL-Cov objective.
- [IcePop] Ling team 2025, "IcePop: small leaks sink a great ship" (training/inference mismatch masking).
- [GRPO] Shao et al. 2024 (DeepSeekMath, arXiv:2402.03300), group-normalised advantage.
"""
from __future__ import annotations

from typing import Optional

import torch

# ---------------------------------------------------------------------------------------------- baselines


def leave_one_out_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """[Pro] Eq. 6: A_i = R_i - 1/(G-1) * sum_{j != i} R_j, per group (rows of ``rewards`` [P, G]).

    Equivalent to G/(G-1) * (R_i - mean_j R_j). G == 1 gives zero advantages.
    """
    rewards = rewards.float()
    g = rewards.shape[-1]
    if g < 2:
        return torch.zeros_like(rewards)
    total = rewards.sum(dim=-1, keepdim=True)
    return rewards - (total - rewards) / (g - 1)


def grpo_advantage(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """[GRPO] A_i = (R_i - mean(R)) / (std(R) + eps) per group (population std; ``scale=False`` drops it)."""
    rewards = rewards.float()
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=-1, unbiased=False, keepdim=True) + eps)


def group_advantages(rewards: torch.Tensor, baseline: str = "loo") -> torch.Tensor:
    if baseline == "loo":
        return leave_one_out_advantage(rewards)
    if baseline == "grpo":
        return grpo_advantage(rewards)
    raise ValueError(f"unknown baseline {baseline!r}; use loo or grpo")


# ---------------------------------------------------------------------------------------------- reduction


def per_sequence_mean(token_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[Pro] 1/G sum_i 1/|y_i| sum_t v_{i,t}: every response weighs the same whatever its length.

    Responses with no counted token contribute 0 but still count in the mean over responses.
    """
    mask = mask.to(token_values.dtype)
    lengths = mask.sum(dim=-1).clamp_min(1.0)
    per_seq = (token_values * mask).sum(dim=-1) / lengths
    return per_seq.mean()


# ---------------------------------------------------------------------------------------------- IcePop


def icepop_mask(logp_train: torch.Tensor, logp_rollout: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """[Pro] Eq. 4: rho_t = pi_train(y_t) / pi_rollout(y_t); M(rho) = 1 if alpha < rho < beta else 0.

    ``logp_train`` is the training engine's log-prob under the weights that produced the rollout (pi_old as the
    trainer computes it); ``logp_rollout`` what the rollout engine reported for the same token.
    """
    rho = torch.exp(logp_train.detach().float() - logp_rollout.detach().float())
    return ((rho > alpha) & (rho < beta)).to(logp_train.dtype)


def icepop_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_rollout: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5, beta: float = 5.0,
                return_stats: bool = False):
    """[Pro] Eq. 5 with dual importance sampling; returns the loss to minimise.

        J = 1/G sum_i 1/|y_i| sum_t sg[M(rho_{i,t}) * r_{i,t}] * A_i * log pi_new(y_{i,t})
        rho = pi_old / pi_rollout (train/inference mismatch, masked to (alpha, beta)),
        r   = pi_new / pi_old     (off-policy-ness across mini-batches).

    The stop-gradient on M(rho)*r makes the gradient M*r*A*grad log pi_new = M*A*grad r (no clipping needed:
    tokens whose train/rollout ratio leaves (alpha, beta) are dropped entirely). ``advantages`` is [N] (one
    per response) or [N, T].
    """
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None]
    m = icepop_mask(logp_old, logp_rollout, alpha, beta)
    ratio = torch.exp(logp_new.detach().float() - logp_old.detach().float())
    weight = (m * ratio).detach()
    token_obj = weight * adv * logp_new.float()
    loss = -per_sequence_mean(token_obj, mask)
    if not return_stats:
        return loss
    counted = mask.float().sum().clamp_min(1.0)
    stats = {"icepop_masked_frac": float(((1 - m) * mask.float()).sum() / counted),
             "ratio_mean": float((ratio * mask.float()).sum() / counted)}
    return loss, stats


# ---------------------------------------------------------------------------------------------- GRPO


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2) -> torch.Tensor:
    """[GRPO] clipped surrogate: -1/G sum_i 1/|y_i| sum_t min(r A, clip(r, 1-eps, 1+eps) A), r = pi_new/pi_old."""
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None]
    ratio = torch.exp(logp_new.float() - logp_old.detach().float())
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    return -per_sequence_mean(surrogate, mask)


# ---------------------------------------------------------------------------------------------- OREAL


def oreal_loss(logp: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
               num_pos_tokens: Optional[float] = None, num_neg_tokens: Optional[float] = None,
               neg_coef: float = 1.0, token_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[OREAL] final objective (as used by [S1]):

        L = 1/N+ * sum_{y in D+} sum_t -log pi(y_t)              (behaviour cloning on positives)
          + eta/N- * sum_{y in D-} sum_t  w_t * log pi(y_t)       (policy gradient with reward -1 on negatives)

    N+ / N- are the *global* positive / negative token counts (all micro-batches and data-parallel ranks: pass
    them in; by default the counts of this batch). ``positive`` is a [N] bool, ``w_t`` the optional token
    importance weights of OREAL's token-level reward model (default 1), ``eta`` = ``neg_coef``.
    """
    m = mask.float()
    pos = positive.to(torch.bool)[:, None].float() * m
    neg = (~positive.to(torch.bool))[:, None].float() * m
    if num_pos_tokens is None:
        num_pos_tokens = float(pos.sum())
    if num_neg_tokens is None:
        num_neg_tokens = float(neg.sum())
    w = torch.ones_like(m) if token_weights is None else token_weights.float()
    lp = logp.float()
    pos_term = -(lp * pos).sum() / max(float(num_pos_tokens), 1.0)
    neg_term = neg_coef * (w * lp * neg).sum() / max(float(num_neg_tokens), 1.0)
    return pos_term + neg_term


# ---------------------------------------------------------------------------------------------- KL-Cov


def kl_cov_fraction(k: float, reading: str = "authors_code") -> float:
    """Fraction of tokens that receive the KL-Cov penalty, from the reported hyper-parameter ``k``.

    [S1] reports k = 0.2. Two readings exist and both are exposed explicitly:
      - ``reading="authors_code"``: k is a *percentage*, as in the KL-Cov authors' code and paper (the paper's
        k = 0.2% is passed there as a ratio 0.002): fraction = k / 100 = 0.002.
      - ``reading="fraction"``: k is already the fraction: fraction = 0.2 (20% of tokens).
    """
    if reading == "authors_code":
        return k / 100.0
    if reading == "fraction":
        return k
    raise ValueError(f"unknown KL-Cov reading {reading!r}; use authors_code or fraction")


def token_covariance(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[KLCov] per-token centred cross product Cov_t = (log pi_t - mean log pi) * (A_t - mean A).

    Means are over the counted tokens of the batch; uncounted positions get -inf (never selected).
    """
    adv = advantages.float()
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(logp)
    m = mask.to(torch.bool)
    lp = logp.detach().float()
    n = m.sum().clamp_min(1)
    lp_mean = (lp * m).sum() / n
    adv_mean = (adv * m).sum() / n
    cov = (lp - lp_mean) * (adv - adv_mean)
    return torch.where(m, cov, torch.full_like(cov, float("-inf")))


def kl_cov_penalty(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                   mask: torch.Tensor, fraction: float, coef: float = 0.01):
    """[KLCov] KL penalty beta * |log pi_new - log pi_old| on the top ``fraction`` of counted tokens ranked by
    Cov(log pi, A); zero elsewhere. Returns (penalty [N, T] to *add* to the per-token loss, selected mask).

    The number of selected tokens is max(1, floor(fraction * n_tokens)) when fraction > 0, else 0.
    """
    cov = token_covariance(logp_old if logp_old is not None else logp_new, advantages, mask)
    n_tokens = int(mask.to(torch.bool).sum())
    k = int(fraction * n_tokens)
    if fraction > 0 and n_tokens > 0:
        k = max(k, 1)
    selected = torch.zeros_like(mask, dtype=torch.bool)
    if k > 0:
        idx = torch.topk(cov.reshape(-1), k).indices
        selected.view(-1)[idx] = True
    penalty = coef * (logp_new.float() - logp_old.detach().float()).abs() * selected.float()
    return penalty, selected


def oreal_kl_cov_loss(logp_new, logp_old, mask, positive, advantages, fraction: float, coef: float = 0.01,
                      num_pos_tokens=None, num_neg_tokens=None, neg_coef: float = 1.0):
    """[S1] RL objective: OREAL plus the KL-Cov penalty (averaged over all counted tokens)."""
    base = oreal_loss(logp_new, mask, positive, num_pos_tokens, num_neg_tokens, neg_coef)
    penalty, _ = kl_cov_penalty(logp_new, logp_old, advantages, mask, fraction, coef)
    return base + penalty.sum() / mask.float().sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------- diagnostics


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.float()
    return (values.float() * mask).sum() / mask.sum().clamp_min(1.0)


def sampled_kl(logp_p: torch.Tensor, logp_q: torch.Tensor, mask: torch.Tensor) -> float:
    """k3 estimator of KL(q || p) on tokens sampled from q: E_q[exp(lp - lq) - (lp - lq) - 1] (>= 0).

    Used to report the train/rollout log-prob mismatch (q = rollout policy, p = training forward).
    """
    d = logp_p.double() - logp_q.double()  # (fp32 rounds exp(d) - d - 1 to 0 below |d| ~ 3e-4)
    return float(masked_mean(torch.exp(d) - d - 1.0, mask))
