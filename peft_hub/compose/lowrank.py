"""Pure tensor math on low-rank factors: stacking and exact truncation.

A LoRA module contributes ``ΔW = s·B·A`` with ``B`` (d, r) and ``A`` (r, k).
Every function here works on such factor pairs and never forms a dense
(d, k) matrix, except :func:`dense_truncate`, which exists for the merge
methods that are defined on the dense matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The small QR/SVD work is done in float64: it costs little (R is a few
# dozen) and keeps the truncation equal to a dense SVD up to fp32 rounding.
CORE_DTYPE = torch.float64


def stack_factors(
    factors: Sequence[tuple[torch.Tensor, torch.Tensor]],
    coeffs: Sequence[float],
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate factor pairs along the rank dimension, folding coefficients into B.

    ``Σ cᵢ·Bᵢ·Aᵢ = [c₁B₁ | c₂B₂ | …] · [A₁; A₂; …]`` exactly: A's are only
    copied, and each entry of B is rounded once, to ``dtype``.

    Args:
        factors: ``(B, A)`` pairs, B (d, rᵢ) and A (rᵢ, k).
        coeffs: one coefficient per pair (weight times LoRA scale).
        dtype: the dtype to compute and return in.

    Returns:
        ``(B, A)`` with B (d, R) and A (R, k), R = Σ rᵢ.
    """
    if len(factors) != len(coeffs):
        raise ValueError(f"{len(factors)} factor pairs but {len(coeffs)} coefficients")
    b = torch.cat([bi.to(dtype) * c for (bi, _), c in zip(factors, coeffs)], dim=1)  # (d, R)
    a = torch.cat([ai.to(dtype) for _, ai in factors], dim=0)  # (R, k)
    return b, a


def lowrank_svd(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD of ``b @ a`` computed from the factors.

    QR of B and of Aᵀ reduce the problem to the SVD of a small core:
    ``B·A = Q_B (R_B R_Aᵀ) Q_Aᵀ = (Q_B U) S (Q_A V)ᵀ``. Cost is
    O((d + k)·R² + R³); the (d, k) product is never formed.

    Args:
        b: (d, R) left factor.
        a: (R, k) right factor.

    Returns:
        ``(U, S, Vh)`` with U (d, p), S (p,), Vh (p, k), p = min(d, k, R),
        singular values in descending order, all in float64.
    """
    qb, rb = torch.linalg.qr(b.to(CORE_DTYPE))  # (d, min(d, R)), (min(d, R), R)
    qa, ra = torch.linalg.qr(a.to(CORE_DTYPE).T)  # (k, min(k, R)), (min(k, R), R)
    core = rb @ ra.T  # (min(d, R), min(k, R)) small core
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    return qb @ u, s, vh @ qa.T


def split_factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the top ``rank`` singular triplets as LoRA factors.

    The singular values are split as √S on each side, so neither factor
    carries the whole dynamic range (which matters when writing fp16).

    Args:
        u: (d, p) left singular vectors.
        s: (p,) singular values, descending.
        vh: (p, k) right singular vectors.
        rank: how many to keep (at most p).

    Returns:
        ``(B, A)``: B (d, rank) and A (rank, k), in the dtype of ``u``.
    """
    root = s[:rank].sqrt()  # (rank,)
    b = u[:, :rank] * root  # (d, rank)
    a = root[:, None] * vh[:rank]  # (rank, k)
    return b, a


def energy_kept(s: torch.Tensor, rank: int) -> tuple[float, float]:
    """Squared Frobenius norm kept by a rank truncation, and the total.

    Args:
        s: singular values of ΔW.
        rank: how many are kept.

    Returns:
        ``(kept, total)``, both ``Σ σᵢ²`` sums (total is ‖ΔW‖²_F).
    """
    sq = s.double().square()
    return float(sq[:rank].sum()), float(sq.sum())


def truncate_factors(
    b: torch.Tensor, a: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-``rank`` approximation of ``b @ a`` (Eckart–Young), from factors.

    Args:
        b: (d, R) left factor.
        a: (R, k) right factor.
        rank: target rank; capped at min(d, k, R).

    Returns:
        ``(B', A', kept, total)`` with B' (d, r), A' (r, k) in float64, and
        the energy kept and total as in :func:`energy_kept`.
    """
    u, s, vh = lowrank_svd(b, a)
    r = min(rank, s.numel())
    b_new, a_new = split_factors(u, s, vh, r)
    return (b_new, a_new, *energy_kept(s, r))


def dense_truncate(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-``rank`` approximation of a dense (d, k) matrix, by exact SVD.

    Used by the merge methods (TIES, DARE, magnitude pruning), whose result
    is not low-rank. ``torch.linalg.svd`` is exact (not randomized).

    Args:
        delta: (d, k) dense ΔW.
        rank: target rank; capped at min(d, k).

    Returns:
        ``(B', A', kept, total)`` as in :func:`truncate_factors`, in float32.
    """
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)  # (d, p), (p,), (p, k)
    r = min(rank, s.numel())
    b_new, a_new = split_factors(u, s, vh, r)
    return (b_new, a_new, *energy_kept(s, r))
