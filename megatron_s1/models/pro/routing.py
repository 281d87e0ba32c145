"""The Intern-S1-Pro router formulas, in one place (pure tensor functions, no Megatron state).

* Grouped routing (Pro §2.1): `grouped_topk` / `grouped_topk_routing`.
* Straight-through router gradient (Pro Eq. 2-3): `ste_routing_weights`.

Notation: T tokens, E experts, K experts per token, G groups of S = E/G consecutive experts. With
expert parallelism Megatron places experts [r*E/EP, (r+1)*E/EP) on EP rank r, so group g lives on EP rank
g*S // (E/EP); when G is a multiple of EP every rank hosts G/EP whole groups.
"""
from __future__ import annotations

import torch


def grouped_topk(scores: torch.Tensor, topk: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group top-(K/G) selection (Pro §2.1).

    The E experts are split into G disjoint groups of S = E/G consecutive experts (the EP device mapping).
    Every token takes its best K/G experts *inside each group*; the active set is the union of the G
    per-group choices, so it always has exactly K experts with exactly K/G of them in every group:

        A(x) = U_{g=1..G} TopK_{K/G}( { s_e(x) : e in group g } )

    Consequence: for any batch of T tokens, each group (and, with G = EP or G a multiple of EP, each EP
    rank) receives exactly T*K/G (resp. T*K/EP) token-expert assignments - the all-to-all is balanced by
    construction, whatever the router weights are.

    How this differs from Megatron's group-limited routing (`moe_utils.group_limited_topk`, DeepSeek's
    device/node-limited routing): Megatron first *chooses* `group_topk` of the G groups per token (by the
    sum of their best scores) and then takes the global top-K among the experts of the chosen groups. It
    bounds how many devices a token talks to, but the number of assignments per group is data dependent
    (a token may put all K experts on one device and none on the others), so EP ranks stay unbalanced.
    The Pro router visits *every* group and fixes the count per group to K/G; it trades the
    communication-fan-out limit for exact per-device balance. With G = 1 both reduce to plain top-K.

    Args:
        scores: [T, E] routing scores (any monotone function of the logits; softmax in Pro).
        topk: K, a multiple of `num_groups`.
        num_groups: G, dividing E.

    Returns:
        (values [T, K], indices [T, K]) ordered group by group (group 0's picks first).
    """
    num_tokens, num_experts = scores.shape
    if num_experts % num_groups or topk % num_groups:
        raise ValueError(f"grouped routing needs G={num_groups} to divide E={num_experts} and K={topk}")
    group_size = num_experts // num_groups
    per_group = topk // num_groups
    values, local = scores.view(num_tokens, num_groups, group_size).topk(per_group, dim=-1)
    offsets = torch.arange(num_groups, device=scores.device).view(1, num_groups, 1) * group_size
    return values.reshape(num_tokens, topk), (local + offsets).reshape(num_tokens, topk)


def grouped_topk_routing(logits: torch.Tensor, topk: int, num_groups: int = 1,
                         norm_topk_prob: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing weights of the Pro grouped router (Pro §2.1), as in the released model.

        p = softmax(z),  A = grouped_topk(z),  w_e = p_e / sum_{e' in A} p_e'   for e in A  (norm_topk_prob)
                                               w_e = p_e                        otherwise

    Selecting on z or on p is the same (softmax is monotone). The renormalised weights are computed as a
    softmax over the selected logits: equal to p_e / sum_A p, and bit-identical to Megatron's post-softmax
    top-K when G = 1.

    Returns (weights [T, K] in fp32, indices [T, K]).
    """
    _, indices = grouped_topk(logits.float(), topk, num_groups)
    return topk_weights(logits, indices, norm_topk_prob), indices


def topk_weights(logits: torch.Tensor, indices: torch.Tensor, norm_topk_prob: bool = True) -> torch.Tensor:
    """w = softmax over the selected logits (= p_e / sum_A p, norm_topk_prob) or the dense softmax p_e."""
    if norm_topk_prob:
        return torch.softmax(logits.float().gather(1, indices), dim=-1)
    return torch.softmax(logits.float(), dim=-1).gather(1, indices)


def ste_routing_weights(logits: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                        temperature: float = 1.0) -> torch.Tensor:
    """Straight-through estimator for the router (Pro Eq. 2-3).

    Eq. 2 (forward): the experts are combined with the sparse top-K weights w (from `weights`), exactly:

        w~_e = sg(w_e) + p^tau_e - sg(p^tau_e),   p^tau = softmax(z / tau),   e in A(x)

    (sg = stop-gradient; p - sg(p) is exactly 0 in floating point, so w~ == w bit for bit).

    Eq. 3 (backward): the gradient reaches the logits through the dense temperature-scaled softmax:

        dL/dz_i = sum_{e in A} (dL/dw~_e) * dp^tau_e/dz_i = (1/tau) * sum_{e in A} g_e * p^tau_e * (1[e=i] - p^tau_i)

    which is non-zero for every expert i, selected or not - every router row is trained at every step,
    instead of only the K selected rows (plain top-K) . `tau` sharpens (tau < 1) or flattens (tau > 1)
    the dense distribution that carries the gradient.

    Args:
        logits: [T, E] router logits z.
        indices: [T, K] selected experts A(x).
        weights: [T, K] forward weights w of those experts.
        temperature: tau > 0.
    """
    if temperature <= 0:
        raise ValueError(f"STE temperature must be > 0, got {temperature}")
    dense = torch.softmax(logits.float() / temperature, dim=-1).gather(1, indices)
    return weights.detach() + (dense - dense.detach())


def tokens_per_group(routing_map: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Token-expert assignments per group (= per EP rank when G = EP) from a [T, E] boolean routing map."""
    return routing_map.view(routing_map.shape[0], num_groups, -1).sum(dim=(0, 2))
