"""Initialise the embedding rows of each modality in mutually orthogonal subspaces.

Intern-S1's dynamic tokenizer gives every modality (prose, SMILES, protein, ...) its own id range so that the
same character gets a different embedding per modality; initialising those ranges in orthogonal subspaces makes
the modalities start out non-interfering.

Construction (hidden size ``d``, ``K`` row ranges ``R_1..R_K``):

1. Draw a ``d x d`` Gaussian matrix and take the ``Q`` of its QR decomposition: ``d`` orthonormal columns.
2. Split the columns into ``K`` disjoint blocks ``Q_k`` of ``d_k`` columns (``d_k = d // K``, the first
   ``d mod K`` blocks get one more). The subspaces ``S_k = span(Q_k)`` are mutually orthogonal because the
   columns of ``Q`` are.
3. Each row ``r`` in ``R_k`` becomes ``W[r] = c_r Q_k^T`` with ``c_r ~ N(0, std^2 * d / d_k)`` i.i.d., so
   ``W[r]`` lies in ``S_k`` and ``E||W[r]||^2 = d * std^2`` — the same expected norm as the plain
   ``N(0, std^2)`` init.

Hence ``W[r_i] . W[r_j] = 0`` (up to float rounding) for rows of different modalities. Rows outside every range
are left untouched. The cost is that each modality's rows only span ``d_k`` dimensions at init.
"""
from __future__ import annotations

from typing import Sequence

import torch


def orthogonal_modality_init_(weight: torch.Tensor, ranges: Sequence[tuple[int, int]], std: float = 0.02,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``weight[start:end]`` of each ``(start, end)`` in `ranges` so the ranges lie in mutually orthogonal
    subspaces (see the module docstring). In place; returns `weight`.

    Raises ValueError for a non-2-D weight, empty/out-of-bounds/overlapping ranges, or more ranges than the
    hidden size.
    """
    if weight.dim() != 2:
        raise ValueError(f"embedding weight must be 2-D (vocab, hidden), got shape {tuple(weight.shape)}")
    vocab, hidden = weight.shape
    ranges = [(int(a), int(b)) for a, b in ranges]
    if not ranges:
        raise ValueError("no row ranges given; pass one (start, end) per modality")
    if len(ranges) > hidden:
        raise ValueError(f"{len(ranges)} modalities need at least {len(ranges)} hidden dims, got {hidden}")
    for a, b in ranges:
        if not 0 <= a < b <= vocab:
            raise ValueError(f"row range ({a}, {b}) is empty or outside the {vocab}-row embedding; use "
                             "0 <= start < end <= vocab_size")
    ordered = sorted(ranges)
    for (a0, b0), (a1, b1) in zip(ordered, ordered[1:]):
        if a1 < b0:
            raise ValueError(f"row ranges ({a0}, {b0}) and ({a1}, {b1}) overlap; each row belongs to one modality")
    k = len(ranges)
    gauss = torch.randn(hidden, hidden, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(gauss)
    sizes = [hidden // k + (1 if i < hidden % k else 0) for i in range(k)]
    col = 0
    with torch.no_grad():
        for (a, b), dk in zip(ranges, sizes):
            basis = q[:, col:col + dk]  # (hidden, d_k), orthonormal columns
            col += dk
            coeff = torch.randn(b - a, dk, generator=generator, dtype=torch.float64) * (std * (hidden / dk) ** 0.5)
            weight[a:b] = (coeff @ basis.T).to(device=weight.device, dtype=weight.dtype)
    return weight


def modality_ranges(tokenizer) -> list[tuple[int, int]]:
    """Row ranges per modality of a DynamicTokenizer (base vocabulary first, then each domain)."""
    return [tuple(r) for r in tokenizer.domain_ranges().values()]
