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

import math
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


def grpo_advantage(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True, unbiased: bool = True) -> torch.Tensor:
    """[GRPO] A_i = (R_i - mean(R)) / (std(R) + eps) per group (rows of ``rewards`` [P, G]).

    std is the unbiased sample std, sqrt(sum_j (R_j - mean)^2 / (G - 1)) (as verl, XTuner and OREAL compute it);
    ``unbiased=False`` takes the population std (divide by G). ``scale=False`` keeps only the centring. G == 1 gives
    zero advantages (the unbiased std is undefined there).
    """
    rewards = rewards.float()
    if rewards.shape[-1] < 2:
        return torch.zeros_like(rewards)
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=-1, unbiased=unbiased, keepdim=True) + eps)


def group_advantages(rewards: torch.Tensor, baseline: str = "loo", std: str = "unbiased") -> torch.Tensor:
    """Advantages of ``rl.baseline``: loo (Pro Eq. 6) or grpo with ``rl.grpo_std`` (unbiased | population)."""
    if std not in ("unbiased", "population"):
        raise ValueError(f"unknown GRPO std {std!r}; use unbiased or population")
    if baseline == "loo":
        return leave_one_out_advantage(rewards)
    if baseline == "grpo":
        return grpo_advantage(rewards, unbiased=std == "unbiased")
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


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages [N] (one per response) as [N, 1]; [N, T] stays."""
    adv = advantages.float()
    return adv[:, None] if adv.dim() == 1 else adv


# ---------------------------------------------------------------------------------------------- IcePop


def icepop_mask(logp_train: torch.Tensor, logp_rollout: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """[Pro] Eq. 5: M(rho; alpha, beta) = rho if alpha < rho < beta else 0 (open interval), with
    rho_t = pi_train(y_t; theta_old) / pi_rollout(y_t; theta_old) (Eq. 4).

    ``logp_train`` is the training engine's log-prob under the weights that produced the rollout (pi_old as the
    trainer computes it); ``logp_rollout`` what the rollout engine reported for the same token. Both belong to
    theta_old, so M carries no gradient (it is returned detached): it is an importance weight from the rollout
    engine's distribution to the training engine's, zeroed where the two disagree too much.
    """
    rho = torch.exp(logp_train.detach().float() - logp_rollout.detach().float())
    return torch.where((rho > alpha) & (rho < beta), rho, torch.zeros_like(rho))


def icepop_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, logp_rollout: torch.Tensor,
                advantages: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5, beta: float = 5.0,
                return_stats: bool = False):
    """[Pro] Eq. 5 with dual importance sampling; returns the loss to minimise.

        J = 1/G sum_i 1/|y_i| sum_t sg[M(rho_{i,t}) * r_{i,t}] * A_i * log pi_new(y_{i,t})
        M(rho) = rho on alpha < rho < beta, else 0;  rho = pi_old / pi_rollout (train/inference mismatch),
        r = pi_new / pi_old (off-policy-ness across mini-batches).

    The factor M(rho) multiplies the policy-gradient term. Everything in sg[.] is a constant of the update: rho
    depends on theta_old only, and r enters as a detached weight on log pi_new, so
    grad J = 1/G sum_i 1/|y_i| sum_t M(rho) r A_i grad log pi_new = ... sum_t (pi_new / pi_rollout) A_i grad log
    pi_new on the kept tokens: the policy gradient importance-sampled from the rollout engine's samples. No
    clipping: tokens whose rho leaves (alpha, beta) are dropped instead.
    ``advantages`` is [N] (one per response) or [N, T]. ``return_stats`` adds the masked fraction and the
    min / mean / max of the kept rho over the counted tokens (sums and counts for reductions over mini-batches).
    """
    adv = _per_token(advantages)
    m = icepop_mask(logp_old, logp_rollout, alpha, beta)
    ratio = torch.exp(logp_new.detach().float() - logp_old.detach().float())
    weight = (m * ratio).detach()
    token_obj = weight * adv * logp_new.float()
    loss = -per_sequence_mean(token_obj, mask)
    if not return_stats:
        return loss
    counted = mask.to(torch.bool)
    kept = counted & (m > 0)
    rho_kept = m[kept]
    stats = {"icepop_tokens": float(counted.sum()), "icepop_masked": float((counted & ~kept).sum()),
             "icepop_kept": float(kept.sum()), "icepop_rho_sum": float(rho_kept.sum()),
             "icepop_rho_min": float(rho_kept.min()) if rho_kept.numel() else math.inf,
             "icepop_rho_max": float(rho_kept.max()) if rho_kept.numel() else -math.inf}
    return loss, stats


# ---------------------------------------------------------------------------------------------- GRPO


def ppo_surrogate(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_eps: float = 0.2,
                  dual_clip: Optional[float] = None) -> torch.Tensor:
    """Per-token clipped surrogate min(r A, clip(r, 1-eps, 1+eps) A), r = pi_new / pi_old (the objective; negate
    for a loss). ``dual_clip`` c bounds it from below by c * A where A < 0 (dual-clip PPO, as XTuner's policy loss)."""
    ratio = torch.exp(logp_new.float() - logp_old.detach().float())
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    if dual_clip is not None:
        surrogate = torch.where(adv < 0, torch.maximum(surrogate, dual_clip * adv), surrogate)
    return surrogate


def grpo_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float = 0.2) -> torch.Tensor:
    """[GRPO] clipped surrogate: -1/G sum_i 1/|y_i| sum_t min(r A, clip(r, 1-eps, 1+eps) A), r = pi_new/pi_old."""
    return -per_sequence_mean(ppo_surrogate(logp_new, logp_old, _per_token(advantages), clip_eps), mask)


# ---------------------------------------------------------------------------------------------- OREAL


def oreal_loss(logp: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor,
               num_pos_tokens: Optional[float] = None, num_neg_tokens: Optional[float] = None,
               neg_coef: float = 1.0, token_weights: Optional[torch.Tensor] = None, pos_coef: float = 1.0,
               advantages: Optional[torch.Tensor] = None, weight_positives: bool = False,
               weight_negatives: bool = False) -> torch.Tensor:
    """[OREAL] final objective (as used by [S1]); the defaults are the paper's:

        L = c+/N+ * sum_{y in D+} a+_y sum_t -log pi(y_t)        (behaviour cloning on positives)
          - eta/N- * sum_{y in D-} a-_y sum_t w_t log pi(y_t)     (policy gradient on negatives)

    Paper: c+ = eta = 1, a+ = 1, a- = -1 (reward -1 on negatives: the second line is +1/N- sum w log pi).
    The official OREAL configs' options: ``weight_positives`` (their pos_mult_adv: a+_y = A_y),
    ``weight_negatives`` (a-_y = A_y, as their negative term always is), ``neg_coef`` eta (their
    negative_loss_factor, 0.5 in the configs), ``pos_coef`` c+ (positive_loss_factor); the KL to a reference policy
    is `reference_kl`. Their ratio pi/sg(pi) in the negative term has the same gradient as log pi here.
    N+ / N- are the *global* positive / negative token counts (all micro-batches and data-parallel ranks: pass
    them in; by default the counts of this batch). ``positive`` is a [N] bool (reward split), ``w_t`` the optional
    token importance weights of OREAL's token-level reward model (default 1), ``advantages`` [N] (needed by the
    two weightings).
    """
    m = mask.float()
    is_pos = positive.to(torch.bool)[:, None]
    pos = is_pos.float() * m
    neg = (~is_pos).float() * m
    if num_pos_tokens is None:
        num_pos_tokens = float(pos.sum())
    if num_neg_tokens is None:
        num_neg_tokens = float(neg.sum())
    if (weight_positives or weight_negatives) and advantages is None:
        raise ValueError("oreal_loss: advantage-weighted terms need the advantages")
    a_pos = _per_token(advantages) if weight_positives else 1.0
    a_neg = _per_token(advantages) if weight_negatives else -1.0
    w = torch.ones_like(m) if token_weights is None else token_weights.float()
    lp = logp.float()
    pos_term = -pos_coef * (a_pos * lp * pos).sum() / max(float(num_pos_tokens), 1.0)
    neg_term = -neg_coef * (a_neg * w * lp * neg).sum() / max(float(num_neg_tokens), 1.0)
    return pos_term + neg_term


def oreal_xtuner_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                      num_pos_tokens: Optional[float] = None, num_neg_tokens: Optional[float] = None,
                      pos_coef: float = 1.0, neg_coef: float = 1.0, clip_eps: float = 0.2,
                      dual_clip: Optional[float] = 3.0) -> torch.Tensor:
    """XTuner's OREAL loss (the trainer Intern-S1 was trained with). Positives / negatives split by A > 0 / A <= 0:

        L = c+/N+ * sum_{A>0} sum_t [ -log pi_new(y_t) - s(r, A) ] - eta/N- * sum_{A<=0} sum_t s(r, A)

    s = `ppo_surrogate` with dual clip (weighted by A: a policy-gradient term on positives too), r = pi_new/pi_old.
    N+ / N- count the tokens of responses with A > 0 / A <= 0 (global counts: pass them in)."""
    adv = _per_token(advantages).expand_as(logp_new)
    m = mask.float()
    pos = (adv > 0).float() * m
    neg = (adv <= 0).float() * m
    if num_pos_tokens is None:
        num_pos_tokens = float(pos.sum())
    if num_neg_tokens is None:
        num_neg_tokens = float(neg.sum())
    surrogate = ppo_surrogate(logp_new, logp_old, adv, clip_eps, dual_clip)
    pos_term = pos_coef * ((-logp_new.float() - surrogate) * pos).sum() / max(float(num_pos_tokens), 1.0)
    neg_term = -neg_coef * (surrogate * neg).sum() / max(float(num_neg_tokens), 1.0)
    return pos_term + neg_term


def oreal_positive(variant: str, raw_positive: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """The positive set of each OREAL variant: the paper's D+ (raw reward > 0.5), XTuner's A > 0."""
    if variant == "paper":
        return raw_positive.to(torch.bool)
    if variant == "xtuner":
        return advantages > 0
    raise ValueError(f"unknown OREAL variant {variant!r}; use paper or xtuner")


def reference_kl(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, coef: float,
                 num_tokens: Optional[float] = None) -> torch.Tensor:
    """KL to a reference policy, as the official OREAL code adds it (its default "unbias" estimator k3):

        coef / N * sum_{all responses} sum_t [exp(d_t) - d_t - 1],  d_t = log pi_ref(y_t) - log pi(y_t)

    N = all counted response tokens (global count: pass it in). k3 >= 0, zero with zero gradient at pi = pi_ref.
    """
    d = logp_ref.detach().float() - logp.float()
    n = float(mask.float().sum()) if num_tokens is None else float(num_tokens)
    return coef * ((torch.exp(d) - d - 1.0) * mask.float()).sum() / max(n, 1.0)


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
    adv = _per_token(advantages).expand_as(logp)
    m = mask.to(torch.bool)
    lp = logp.detach().float()
    n = m.sum().clamp_min(1)
    lp_mean = (lp * m).sum() / n
    adv_mean = (adv * m).sum() / n
    cov = (lp - lp_mean) * (adv - adv_mean)
    return torch.where(m, cov, torch.full_like(cov, float("-inf")))


def kl_cov_penalty(logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   fraction: float, coef: float = 0.01, num_tokens: Optional[float] = None):
    """[KLCov] the KL-Cov term added to the loss, as its authors compute it:

        coef / N * sum_{t in S} |log pi_new(y_t) - log pi_old(y_t)|

    S = the top max(1, floor(fraction * n)) of the n counted tokens ranked by Cov(log pi, A) (`token_covariance`)
    with the *current* policy's log-probs, detached; N = all counted response tokens of the mini-batch (a token
    mean; pass the global count under data parallelism, selection stays over this rank's tokens). On the first
    mini-batch of a rollout pi_new = pi_old: the term is 0 and, since d|x|/dx = 0 at 0 in torch, so is its
    gradient -- KL-Cov acts only from the second mini-batch on.

    Returns (penalty scalar, stats): selected / counted token counts and the sum of |log pi_new - log pi_old|
    over S.
    """
    m = mask.to(torch.bool)
    n_tokens = int(m.sum())
    k = int(fraction * n_tokens)
    if fraction > 0 and n_tokens > 0:
        k = max(k, 1)
    selected = torch.zeros_like(m)
    if k > 0:
        cov = token_covariance(logp_new, advantages, mask)
        selected.view(-1)[torch.topk(cov.reshape(-1), k).indices] = True
    abs_diff = (logp_new.float() - logp_old.detach().float()).abs() * selected.float()
    n = n_tokens if num_tokens is None else float(num_tokens)
    penalty = coef * abs_diff.sum() / max(n, 1.0)
    stats = {"kl_cov_selected": float(k), "kl_cov_tokens": float(n_tokens),
             "kl_cov_abs_sum": float(abs_diff.detach().sum())}
    return penalty, stats


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
