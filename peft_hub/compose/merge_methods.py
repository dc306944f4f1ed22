"""TIES, DARE and magnitude pruning on dense task tensors (pure functions).

These follow the papers and PEFT's ``utils/merge_utils.py``:

* TIES (Yadav et al., 2023): trim each task vector to its top-``density``
  entries by magnitude, elect a sign per entry, and average the entries
  that agree with it (disjoint mean).
* DARE (Yu et al., 2023): drop each entry with probability ``1 - density``
  and rescale the survivors by ``1 / density``; then sum (``dare_linear``)
  or TIES-merge (``dare_ties``).
* magnitude pruning: trim as TIES does, then sum.

Every function takes *weighted* task tensors ``wᵢ·ΔWᵢ``. For positive
weights this is the same as PEFT (pruning commutes with a positive scale,
and the sign counts of ``frequency`` are unchanged). Where PEFT elects the
``total`` sign from the unweighted tensors, we elect it from the weighted
ones, so that a negative weight subtracts a task instead of voting for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from peft_hub.compose.spec import MERGE_METHODS, MajoritySign, MergeMethod

__all__ = ["MERGE_METHODS", "MajoritySign", "MergeMethod", "merge_dense"]


def prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density·numel)`` entries of largest magnitude, zero the rest.

    Args:
        tensor: any shape.
        density: fraction kept, in [0, 1].

    Returns:
        A new tensor of the same shape.
    """
    if density >= 1:
        return tensor.clone()
    flat = tensor.reshape(-1)
    k = int(density * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat.abs(), k=k, largest=True, sorted=False).indices] = True
    return (flat * mask).reshape(tensor.shape)


def prune_random(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's drop-and-rescale: keep each entry with probability ``density``.

    Args:
        tensor: any shape.
        density: keep probability, in (0, 1].
        generator: the seeded source of randomness.

    Returns:
        ``tensor · mask / density``, a new tensor.
    """
    if density >= 1:
        return tensor.clone()
    keep = torch.rand(tensor.shape, generator=generator, dtype=torch.float32) < density
    return tensor * keep / density


def elect_sign(tensors: Sequence[torch.Tensor], method: MajoritySign) -> torch.Tensor:
    """The elected sign per entry: +1 where the vote is ≥ 0, else -1.

    Args:
        tensors: the (trimmed, weighted) task tensors, same shape.
        method: ``total`` sums the values, ``frequency`` sums their signs.

    Returns:
        A tensor of ±1 of the same shape.
    """
    vote = torch.zeros_like(tensors[0])
    for t in tensors:
        vote += t if method == "total" else t.sign()
    return torch.where(vote >= 0, 1.0, -1.0).to(tensors[0].dtype)


def disjoint_mean(tensors: Sequence[torch.Tensor], sign: torch.Tensor) -> torch.Tensor:
    """Mean of the entries whose sign agrees with the elected one (zeros never agree).

    Args:
        tensors: the task tensors, same shape.
        sign: the elected ±1 sign per entry.

    Returns:
        The merged tensor; entries no task agrees on are zero.
    """
    total = torch.zeros_like(tensors[0])
    count = torch.zeros_like(tensors[0])
    for t in tensors:
        agree = t.sign() == sign
        total += t * agree
        count += agree
    return total / count.clamp(min=1.0)


def ties(tensors: Sequence[torch.Tensor], density: float, majority_sign: MajoritySign = "total") -> torch.Tensor:
    """TIES merging: trim, elect sign, disjoint mean.

    Args:
        tensors: weighted task tensors ``wᵢ·ΔWᵢ``, same shape.
        density: fraction of each task tensor kept by magnitude.
        majority_sign: how the sign is elected.

    Returns:
        The merged dense tensor.
    """
    trimmed = [prune_magnitude(t, density) for t in tensors]
    return disjoint_mean(trimmed, elect_sign(trimmed, majority_sign))


def dare_linear(tensors: Sequence[torch.Tensor], density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE drop-and-rescale, then a plain sum.

    Args:
        tensors: weighted task tensors, same shape.
        density: keep probability.
        generator: seeded; consumed in task order.

    Returns:
        The merged dense tensor.
    """
    out = torch.zeros_like(tensors[0])
    for t in tensors:
        out += prune_random(t, density, generator)
    return out


def dare_ties(
    tensors: Sequence[torch.Tensor],
    density: float,
    generator: torch.Generator,
    majority_sign: MajoritySign = "total",
) -> torch.Tensor:
    """DARE drop-and-rescale, then TIES's sign election and disjoint mean.

    Args:
        tensors: weighted task tensors, same shape.
        density: keep probability.
        generator: seeded; consumed in task order.
        majority_sign: how the sign is elected.

    Returns:
        The merged dense tensor.
    """
    dropped = [prune_random(t, density, generator) for t in tensors]
    return disjoint_mean(dropped, elect_sign(dropped, majority_sign))


def magnitude_prune(tensors: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """Trim each task tensor by magnitude, then sum.

    Args:
        tensors: weighted task tensors, same shape.
        density: fraction of each kept.

    Returns:
        The merged dense tensor.
    """
    out = torch.zeros_like(tensors[0])
    for t in tensors:
        out += prune_magnitude(t, density)
    return out


def merge_dense(
    method: MergeMethod,
    tensors: Sequence[torch.Tensor],
    *,
    density: float,
    majority_sign: MajoritySign = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dispatch to one of the merge methods.

    Args:
        method: which method.
        tensors: weighted task tensors, same shape.
        density: see each method.
        majority_sign: for ``ties`` and ``dare_ties``.
        generator: required for the DARE methods.

    Returns:
        The merged dense tensor.
    """
    if method == "ties":
        return ties(tensors, density, majority_sign)
    if method == "magnitude_prune":
        return magnitude_prune(tensors, density)
    if generator is None:
        raise ValueError(f"{method} needs a seeded generator")
    if method == "dare_linear":
        return dare_linear(tensors, density, generator)
    if method == "dare_ties":
        return dare_ties(tensors, density, generator, majority_sign)
    raise ValueError(f"unknown merge method {method!r}")
