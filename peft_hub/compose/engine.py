"""Module-by-module composition: load one module's factors, compute, write, free.

This is the only place that joins the pure math (:mod:`.lowrank`,
:mod:`.merge_methods`) with the streaming IO (:mod:`.io`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from peft_hub.compose.io import StreamingWriter, TensorReader, dtype_name, st_to_torch
from peft_hub.compose.lowrank import dense_truncate, stack_factors, truncate_factors
from peft_hub.compose.merge_methods import merge_dense
from peft_hub.compose.plan import AdapterInput, ModulePlan
from peft_hub.compose.spec import FACTOR_METHODS, ComposeOptions
from peft_hub.compose.threads import intra_op_threads
from peft_hub.errors import ComposeError, IncompatibleAdaptersError, InvalidAdapterError
from peft_hub.progress import tqdm


@dataclass(frozen=True)
class ModuleResult:
    """What happened to one module."""

    name: str
    rank: int
    energy_kept: float | None  # Σ kept σ², i.e. ‖B'A'‖²_F; None when exact by construction
    energy_total: float | None  # ‖ΔW‖²_F of the (merged) delta; None when not computed
    truncation: str | None = None  # "exact" or "randomized" dense SVD; None for the factor methods

    @property
    def fraction(self) -> float:
        if self.energy_total is None or self.energy_total == 0:
            return 1.0
        return min(1.0, (self.energy_kept or 0.0) / self.energy_total)


def module_generator(seed: int, name: str) -> torch.Generator:
    """A generator seeded from ``seed`` and the module name, so results do not depend on order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def load_factors(reader: TensorReader, plan: ModulePlan) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each term's ``(B, A)`` as 2-D tensors in their stored dtype: B (d, r), A (r, k).

    Conv kernels are flattened into k.
    """
    out = []
    for term in plan.terms:
        a = reader.get(term.adapter, term.key_a).reshape(term.rank, -1)  # (r, k)
        b = reader.get(term.adapter, term.key_b).reshape(plan.d, term.rank)  # (d, r)
        out.append((b, a))
    return out


def check_finite_inputs(inputs: list[AdapterInput], plan: ModulePlan,
                        factors: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Refuse a parent whose factors hold NaN or infinities: every sum with them is NaN.

    Raises:
        InvalidAdapterError: naming the adapter and the tensor.
    """
    for term, (b, a) in zip(plan.terms, factors, strict=True):
        for key, tensor in ((term.key_a, a), (term.key_b, b)):
            if not bool(torch.isfinite(tensor).all()):
                raise InvalidAdapterError(
                    f"{inputs[term.adapter].path}: {key} holds NaN or infinite values; nothing was written"
                )


def check_finite_output(plan: ModulePlan, tensors: tuple[torch.Tensor, ...], out_dtype: torch.dtype) -> None:
    """Refuse to write factors that are not finite once cast to ``out_dtype`` (e.g. fp16 overflow).

    Raises:
        ComposeError: naming the module and the dtype.
    """
    if not all(bool(torch.isfinite(t.to(out_dtype)).all()) for t in tensors):
        raise ComposeError(
            f"{plan.name}: the composed factors overflow {dtype_name(out_dtype)} (values beyond its range); "
            "pass --dtype fp32 (or bf16), or smaller weights; nothing was written"
        )


class DeltaBuffers:
    """Float32 task-delta buffers kept from one module to the next.

    A fresh 64–180 MB tensor is an mmap whose page faults cost about as much
    as filling it; modules of a model share a few sizes, so the buffers of the
    last size seen are kept (and dropped, before new ones are made, when the
    size changes, so that the peak is never two sets).
    """

    def __init__(self) -> None:
        self._numel = 0
        self._free: list[torch.Tensor] = []

    def take(self, shape: tuple[int, int], n: int) -> list[torch.Tensor]:
        numel = shape[0] * shape[1]
        if numel != self._numel or len(self._free) < n:
            self._free = []  # release the old set before making the new one
            self._free = [torch.empty(numel) for _ in range(n)]
            self._numel = numel
        return [buf.view(shape) for buf in self._free[:n]]


def compute_module(
    plan: ModulePlan,
    factors: list[tuple[torch.Tensor, torch.Tensor]],
    options: ComposeOptions,
    *,
    rank: int,
    out_dtype: torch.dtype = torch.float32,
    buffers: DeltaBuffers | None = None,
) -> tuple[torch.Tensor, torch.Tensor, ModuleResult]:
    """Compose one module.

    Args:
        plan: the module and its terms (weights and scales).
        factors: ``(B, A)`` per term, from :func:`load_factors`.
        options: the method (``stack`` exact, ``svd`` exact truncation, or a
            dense merge method, None meaning as resolved by
            :attr:`ComposeOptions.resolved_method`), and the merge methods'
            density, majority_sign, seed and svd.
        rank: the output rank for this module (ignored by ``stack``).
        out_dtype: the dtype that will be written; ``stack`` computes in the
            wider of it and the inputs', so each value is rounded once.
        buffers: reused for the dense methods' task deltas (overwritten).

    Returns:
        ``(B', A', result)``: B' (d, r') and A' (r', k), scale 1, in a float
        dtype at least as wide as ``out_dtype``.
    """
    coeffs = [t.weight * t.scale for t in plan.terms]
    method = options.resolved_method
    if method == "stack":
        work = out_dtype
        for b, a in factors:
            work = torch.promote_types(work, torch.promote_types(b.dtype, a.dtype))
        b, a = stack_factors(factors, coeffs, work)  # (d, R), (R, k)
        return b, a, ModuleResult(plan.name, b.shape[1], None, None)
    if method == "svd":
        b, a = stack_factors(factors, coeffs, torch.float64)  # (d, R), (R, k)
        b, a, kept, total = truncate_factors(b, a, rank)
        return b, a, ModuleResult(plan.name, b.shape[1], kept, total)
    # Each (d, k): one term's weighted task delta, c·(B·A) scaled in place (the same rounding as c * (B @ A)).
    bufs = (buffers or DeltaBuffers()).take((plan.d, plan.k), len(factors))
    tasks = [torch.mm(bi.float(), ai.float(), out=buf).mul_(c)
             for (bi, ai), c, buf in zip(factors, coeffs, bufs, strict=True)]
    merged = merge_dense(
        method, tasks, density=float(options.density or 0), majority_sign=options.majority_sign,
        generator=module_generator(options.seed, plan.name), inplace=True,
    )
    del tasks
    start = torch.cat([ai.float() for _, ai in factors]).T  # (k, R): the row space the merge perturbs
    b, a, kept, total, how = dense_truncate(
        merged, rank, svd=options.svd, signal_rank=plan.stacked_rank,
        generator=module_generator(options.seed, f"{plan.name}/svd"), start=start,
    )
    return b, a, ModuleResult(plan.name, b.shape[1], kept, total, how)


def stream_compose(
    inputs: list[AdapterInput],
    modules: list[ModulePlan],
    ranks: dict[str, int],
    extras: list[tuple[int, str]],
    weights_path: Path,
    *,
    out_dtype: torch.dtype,
    metadata: dict[str, str],
    options: ComposeOptions,
) -> tuple[list[ModuleResult], list[str]]:
    """Compose every module and write the output safetensors file as it goes.

    Args:
        inputs: the parents.
        modules: the planned modules.
        ranks: planned output rank per module name.
        extras: ``(adapter, key)`` of full tensors to carry through unchanged.
        weights_path: the file to write.
        out_dtype: dtype of the written factors.
        metadata: safetensors ``__metadata__``.
        options: see :func:`compute_module`.

    Returns:
        Per-module results, and the keys carried through.

    Raises:
        IncompatibleAdaptersError: two parents carry different values for the same full tensor.
    """
    carried: dict[str, list[int]] = {}
    for i, key in extras:
        carried.setdefault(key, []).append(i)
    entries = []
    for m in modules:
        (key_a, key_b), (shape_a, shape_b) = m.out_keys(), m.out_shapes(ranks[m.name])
        entries += [(key_a, out_dtype, shape_a), (key_b, out_dtype, shape_b)]
    for key, owners in carried.items():
        info = inputs[owners[0]].header.tensors[key]
        entries.append((key, st_to_torch(info.dtype), info.shape))

    results = []
    writer = StreamingWriter(weights_path, entries, metadata)
    # The factor methods work on thin (d, R) matrices, where a second thread costs
    # more than it saves; the dense methods' large products use every core, and
    # lowrank drops to one thread around their thin steps.
    threads = 1 if options.resolved_method in FACTOR_METHODS else None
    buffers = DeltaBuffers()
    try:
        with TensorReader([a.weights_path for a in inputs]) as reader, intra_op_threads(threads):
            for m in tqdm(modules, desc="compose", unit="module"):
                factors = load_factors(reader, m)
                check_finite_inputs(inputs, m, factors)
                b, a, result = compute_module(
                    m, factors, options, rank=ranks[m.name], out_dtype=out_dtype, buffers=buffers,
                )
                del factors
                check_finite_output(m, (b, a), out_dtype)
                if result.rank != ranks[m.name]:
                    raise AssertionError(f"{m.name}: planned rank {ranks[m.name]}, computed {result.rank}")
                shape_a, shape_b = m.out_shapes(result.rank)
                key_a, key_b = m.out_keys()
                writer.write(key_a, a.reshape(shape_a))
                writer.write(key_b, b.reshape(shape_b))
                results.append(result)
            for key, owners in carried.items():
                first = reader.get(owners[0], key)
                for other in owners[1:]:
                    if not torch.equal(first, reader.get(other, key)):
                        raise IncompatibleAdaptersError(
                            f"{key} is a full tensor saved with the adapter (e.g. a resized embedding) and "
                            f"differs between {inputs[owners[0]].path} and {inputs[other].path}"
                        )
                writer.write(key, first)
    except BaseException:
        writer.close(check=False)
        raise
    writer.close()
    return results, sorted(carried)
