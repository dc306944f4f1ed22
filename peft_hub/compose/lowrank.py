"""Pure tensor math on low-rank factors: stacking and truncation.

A LoRA module contributes ``ΔW = s·B·A`` with ``B`` (d, r) and ``A`` (r, k).
Every function here works on such factor pairs and never forms a dense
(d, k) matrix, except :func:`dense_truncate` and :func:`randomized_svd`,
which exist for the merge methods that are defined on the dense matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from peft_hub.compose.spec import TRUNCATIONS, Truncation
from peft_hub.compose.threads import intra_op_threads

# The small QR/SVD work is done in float64: it costs little (R is a few
# dozen) and keeps the truncation equal to a dense SVD up to fp32 rounding.
CORE_DTYPE = torch.float64

#: ``auto`` runs the exact dense SVD when min(d, k) is at most this (a second
#: or less there), the randomized one above it.
EXACT_MAX_DIM = 1024
#: Sketch columns beyond the signal rank, and subspace (power) iterations, of
#: the randomized SVD. Chosen from measurements on merged 4096 x 4096 and
#: 4096 x 11008 TIES/DARE deltas (docs/compose.md): the hardest case measured
#: (DARE-TIES of three equal rank-16 adapters, a flat top-48 spectrum over a
#: noise floor half as high) needs 3 iterations for 2e-5 and 4 for 6e-8
#: relative error in the kept energy from a Gaussian sketch. A sketch that
#: starts from the merged adapters' own row space (their stacked A factors,
#: which the dense merge perturbs but does not leave) needs 2 for 3e-7 on that
#: case and 2e-8 on plain TIES, as close to the exact SVD as 4 Gaussian
#: rounds came (4e-7, 5e-8): 6 large products per module instead of 10.
OVERSAMPLE = 16
POWER_ITERS = 4
POWER_ITERS_STARTED = 2


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
    b = torch.cat([bi.to(dtype) * c for (bi, _), c in zip(factors, coeffs, strict=True)], dim=1)  # (d, R)
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


def factor_energy(b: torch.Tensor, a: torch.Tensor) -> float:
    """``‖b @ a‖²_F`` from the factors, in float64, without forming the product.

    ``‖BA‖²_F = tr(BᵀB · AAᵀ)``, and both Gram matrices are (r, r).

    Args:
        b: (d, r) left factor.
        a: (r, k) right factor.

    Returns:
        The squared Frobenius norm of the product.
    """
    b, a = b.to(CORE_DTYPE), a.to(CORE_DTYPE)
    return float(((b.T @ b) * (a @ a.T)).sum())


def frobenius_sq(m: torch.Tensor, block: int = 256) -> float:
    """``‖m‖²_F`` accumulated in float64, a block of rows at a time (no full float64 copy).

    One float64 buffer is reused for every block (a fresh one per block is an
    mmap and its page faults); the squares are exact in float64 for float32
    input, and each block's sum is the same reduction as on a fresh tensor.
    """
    buf = torch.empty((min(block, m.shape[0]), *m.shape[1:]), dtype=CORE_DTYPE)
    with torch.no_grad(), intra_op_threads(1):  # many short reductions: see peft_hub.compose.threads
        total = 0.0
        for rows in m.split(block):
            b = buf[: rows.shape[0]]
            total += float(b.copy_(rows).square_().sum())
        return total


def _orthonormal_basis(y: torch.Tensor) -> torch.Tensor:
    """Q of the thin QR of a tall (n, l) matrix, on one thread (see :mod:`peft_hub.compose.threads`)."""
    with intra_op_threads(1):
        return torch.linalg.qr(y).Q


def resolve_truncation(svd: Truncation, d: int, k: int) -> Literal["exact", "randomized"]:
    """What ``svd`` means for a (d, k) matrix: ``auto`` is exact up to :data:`EXACT_MAX_DIM`."""
    if svd not in TRUNCATIONS:
        raise ValueError(f"unknown truncation {svd!r}: use one of {', '.join(TRUNCATIONS)}")
    if svd == "auto":
        return "exact" if min(d, k) <= EXACT_MAX_DIM else "randomized"
    return svd


def randomized_svd(
    m: torch.Tensor,
    rank: int,
    *,
    sketch: int,
    power_iters: int | None = None,
    generator: torch.Generator,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top ``rank`` singular triplets of ``m`` by randomized subspace iteration.

    Halko, Martinsson & Tropp (2011), Algorithms 4.4 and 5.1: an orthonormal
    basis Q of ``m @ Ω`` for a Gaussian Ω with ``sketch`` columns, refined by
    ``power_iters`` rounds of ``Q ← qr(m · qr(mᵀ Q))`` (the QR between the
    products keeps the basis from collapsing onto the top singular vector in
    floating point), then the exact SVD of the small ``Qᵀ m``. Ω may begin
    with given columns (``start``: a guess at the row space, which then
    needs fewer iterations), the rest Gaussian. The large
    products run in the dtype of ``m`` on every core; the thin QRs and the
    small SVD (in float64) on one.

    Args:
        m: (d, k) dense matrix.
        rank: how many triplets to return; at most ``sketch``.
        sketch: sketch columns, capped at min(d, k); rank plus oversampling.
        power_iters: subspace iterations; by default :data:`POWER_ITERS`,
            or :data:`POWER_ITERS_STARTED` with ``start``.
        generator: seeds Ω's Gaussian columns, so the result is deterministic.
        start: (k, s) columns for Ω's first ones (at most ``sketch`` of them are used).

    Returns:
        ``(U, S, Vh)``: U (d, rank) with orthonormal columns, S (rank,)
        descending, Vh (rank, k) with orthonormal rows, all float64. ``U S Vh``
        is the best rank-``rank`` approximation of ``Q Qᵀ m``.
    """
    d, k = m.shape
    sketch = min(sketch, d, k)
    rank = min(rank, sketch)
    given = 0 if start is None else min(start.shape[1], sketch)
    omega = torch.randn(k, sketch - given, generator=generator, dtype=m.dtype)  # (k, l - s)
    if start is not None:
        if start.shape[0] != k:
            raise ValueError(f"a start of {start.shape[0]} rows for a matrix of {k} columns")
        omega = torch.cat([start[:, :given].to(m.dtype), omega], dim=1)  # (k, l)
    if power_iters is None:
        power_iters = POWER_ITERS if start is None else POWER_ITERS_STARTED
    q = _orthonormal_basis(m @ omega)  # (d, l)
    for _ in range(power_iters):
        z = _orthonormal_basis(m.T @ q)  # (k, l)
        q = _orthonormal_basis(m @ z)  # (d, l)
    small = (q.T @ m).to(CORE_DTYPE)  # (l, k) = Qᵀ m
    with intra_op_threads(1):
        u, s, vh = torch.linalg.svd(small, full_matrices=False)  # (l, l), (l,), (l, k)
        return q.to(CORE_DTYPE) @ u[:, :rank], s[:rank], vh[:rank]


def dense_truncate(
    delta: torch.Tensor,
    rank: int,
    *,
    svd: Truncation = "auto",
    signal_rank: int = 0,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float, float, str]:
    """A rank-``rank`` approximation of a dense (d, k) matrix, exact or randomized.

    Used by the merge methods (TIES, DARE, magnitude pruning), whose result
    is not low-rank. ``exact`` is ``torch.linalg.svd`` (deterministic, the
    best approximation up to fp32 rounding); ``randomized`` is
    :func:`randomized_svd` with ``max(rank, signal_rank) + OVERSAMPLE`` sketch
    columns; ``auto`` picks by size (:func:`resolve_truncation`). The energy
    is exact either way: ``‖delta‖²_F`` summed directly, and the kept part
    ``‖B'A'‖²_F`` from the returned factors.

    Args:
        delta: (d, k) dense ΔW.
        rank: target rank; capped at min(d, k).
        svd: ``auto``, ``exact`` or ``randomized``.
        signal_rank: how many large singular values ``delta`` is expected to
            have (the stacked rank of the merged adapters); the sketch covers
            them, so that the power iterations converge quickly.
        generator: seeds the randomized sketch; required for it.
        start: (k, s) columns to begin the randomized sketch with (the merged
            adapters' stacked A factors, transposed: where ``delta``'s row space
            mostly lies); ignored by the exact SVD.

    Returns:
        ``(B', A', kept, total, how)``: B' (d, r) and A' (r, k) in float32,
        the energies as in :func:`truncate_factors`, and ``"exact"`` or
        ``"randomized"``.
    """
    delta = delta.float()
    d, k = delta.shape
    how = resolve_truncation(svd, d, k)
    r = min(rank, d, k)
    if how == "exact":
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)  # (d, p), (p,), (p, k)
    else:
        if generator is None:
            raise ValueError("the randomized SVD needs a seeded generator")
        u, s, vh = randomized_svd(delta, r, sketch=max(r, signal_rank) + OVERSAMPLE, generator=generator,
                                  start=start)
    b_new, a_new = split_factors(u, s, vh, r)
    b_new, a_new = b_new.float(), a_new.float()
    return b_new, a_new, factor_energy(b_new, a_new), frobenius_sq(delta), how
