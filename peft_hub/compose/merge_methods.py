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

The work is done block by block in :mod:`peft_hub.compose.fused`: a
threshold per task instead of a top-k over a copy, and the sign election
fused with the disjoint mean. Of entries tied in magnitude at a threshold,
the lowest flat indices are kept (``topk`` leaves that choice to its
selection algorithm).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from peft_hub.compose.fused import Cut, dare_cut, drop_rescale_, magnitude_cut, sum_pass, ties_pass, trim
from peft_hub.compose.spec import MERGE_METHODS, MajoritySign, MergeMethod

__all__ = ["MERGE_METHODS", "MajoritySign", "MergeMethod", "merge_dense"]


def _cut(tensor: torch.Tensor, density: float) -> Cut | None:
    """The magnitude cut keeping ``int(density·numel)`` entries (None: all, when ``density >= 1``)."""
    if density >= 1:
        return None
    return magnitude_cut(tensor.reshape(-1), int(density * tensor.numel()))


def _cuts(tensors: Sequence[torch.Tensor], density: float) -> list[Cut | None]:
    """Every task's cut, on as many threads as torch has intra-op threads (numpy's passes release the GIL)."""
    workers = min(torch.get_num_threads(), len(tensors))
    if workers <= 1 or density >= 1:
        return [_cut(t, density) for t in tensors]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda t: _cut(t, density), tensors))


def prune_magnitude(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density·numel)`` entries of largest magnitude, zero the rest.

    Of entries tied in magnitude at the threshold, the lowest flat indices are kept.

    Args:
        tensor: any shape.
        density: fraction kept, in [0, 1].

    Returns:
        A new tensor of the same shape.
    """
    cut = _cut(tensor, density)
    return tensor.clone() if cut is None else trim(tensor, cut)


def prune_random(tensor: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE's drop-and-rescale: keep each entry with probability ``density``.

    Args:
        tensor: any shape.
        density: keep probability, in (0, 1].
        generator: the seeded source of randomness; ``numel`` uniforms are drawn unless ``density >= 1``.

    Returns:
        ``tensor · mask / density``, a new tensor.
    """
    out = tensor.clone()
    if density < 1:
        drop_rescale_(out.reshape(-1), density, generator)
    return out


def _dare_cuts(tensors: Sequence[torch.Tensor], density: float, generator: torch.Generator) -> list[Cut | None]:
    """DARE's keep masks for every task, drawn in task order (the generator's stream as one draw per task)."""
    if density >= 1:
        return [None] * len(tensors)
    return [dare_cut(t.numel(), density, generator) for t in tensors]


def ties(
    tensors: Sequence[torch.Tensor], density: float, majority_sign: MajoritySign = "total", *, inplace: bool = False
) -> torch.Tensor:
    """TIES merging: trim, elect sign, disjoint mean (one pass after the thresholds).

    Args:
        tensors: weighted task tensors ``wᵢ·ΔWᵢ``, same shape.
        density: fraction of each task tensor kept by magnitude.
        majority_sign: how the sign is elected.
        inplace: the result may be written over ``tensors[0]``.

    Returns:
        The merged dense tensor.
    """
    cuts = _cuts(tensors, density)
    return ties_pass(tensors, cuts, majority_sign, out=_out(tensors, inplace))


def dare_linear(
    tensors: Sequence[torch.Tensor], density: float, generator: torch.Generator, *, inplace: bool = False
) -> torch.Tensor:
    """DARE drop-and-rescale, then a plain sum.

    Args:
        tensors: weighted task tensors, same shape.
        density: keep probability.
        generator: seeded; consumed in task order.
        inplace: accepted for symmetry with the others; the tasks are only read.

    Returns:
        The merged dense tensor.
    """
    del inplace  # the drop is fused into the sum; the tasks are only read
    return sum_pass(tensors, _dare_cuts(tensors, density, generator))


def dare_ties(
    tensors: Sequence[torch.Tensor],
    density: float,
    generator: torch.Generator,
    majority_sign: MajoritySign = "total",
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """DARE drop-and-rescale, then TIES's sign election and disjoint mean.

    Args:
        tensors: weighted task tensors, same shape.
        density: keep probability.
        generator: seeded; consumed in task order.
        majority_sign: how the sign is elected.
        inplace: the result may be written over ``tensors[0]``.

    Returns:
        The merged dense tensor.
    """
    cuts = _dare_cuts(tensors, density, generator)
    return ties_pass(tensors, cuts, majority_sign, out=_out(tensors, inplace))


def magnitude_prune(tensors: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """Trim each task tensor by magnitude, then sum.

    Args:
        tensors: weighted task tensors, same shape.
        density: fraction of each kept.

    Returns:
        The merged dense tensor.
    """
    return sum_pass(tensors, _cuts(tensors, density))


def _out(tensors: Sequence[torch.Tensor], inplace: bool) -> torch.Tensor | None:
    """Where a merge may write: over the first task when allowed and it is a plain contiguous buffer."""
    return tensors[0] if inplace and tensors[0].is_contiguous() else None


def merge_dense(
    method: MergeMethod,
    tensors: Sequence[torch.Tensor],
    *,
    density: float,
    majority_sign: MajoritySign = "total",
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """Dispatch to one of the merge methods.

    Args:
        method: which method.
        tensors: weighted task tensors, same shape.
        density: see each method.
        majority_sign: for ``ties`` and ``dare_ties``.
        generator: required for the DARE methods.
        inplace: the task tensors are scratch: TIES and DARE-TIES write the
            result over the first.

    Returns:
        The merged dense tensor.
    """
    if method == "ties":
        return ties(tensors, density, majority_sign, inplace=inplace)
    if method == "magnitude_prune":
        return magnitude_prune(tensors, density)
    if generator is None:
        raise ValueError(f"{method} needs a seeded generator")
    if method == "dare_linear":
        return dare_linear(tensors, density, generator, inplace=inplace)
    if method == "dare_ties":
        return dare_ties(tensors, density, generator, majority_sign, inplace=inplace)
    raise ValueError(f"unknown merge method {method!r}")
