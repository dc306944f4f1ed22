"""The public API: compose adapter directories into a new PEFT LoRA directory."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from peft_hub.adapter import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from peft_hub.compose.card import LINEAGE_KEY, lineage, render_card, vllm_max_lora_rank
from peft_hub.compose.engine import Method, stream_compose
from peft_hub.compose.io import dtype_name, parse_dtype, st_to_torch
from peft_hub.compose.lowrank import TRUNCATIONS, Truncation
from peft_hub.compose.merge_methods import MERGE_METHODS, MajoritySign
from peft_hub.compose.plan import (
    AdapterInput,
    ModulePlan,
    check_base_models,
    output_targets,
    plan_modules,
    rank_patterns,
    read_adapter,
)
from peft_hub.errors import ComposeError, RankLimitError

METHODS: tuple[str, ...] = ("stack", "svd", *MERGE_METHODS)


@dataclass
class ComposeReport:
    """What :func:`compose_dirs` wrote, and how much of ΔW it kept."""

    output_dir: Path
    method: str  # the method that ran: stack, svd, ties, ...
    rank: int  # largest rank of any output module
    max_rank: int  # the limit it was checked against
    energy_kept: float  # Σ kept / Σ total of ‖ΔW‖²_F over all modules; 1.0 when exact
    module_energy: dict[str, float] = field(default_factory=dict)  # per module, same fraction
    module_ranks: dict[str, int] = field(default_factory=dict)
    truncation: dict[str, int] = field(default_factory=dict)  # dense methods: modules per SVD kind ("exact", "randomized")
    vllm_max_lora_rank: int | None = None
    dtype: str = "fp32"
    lineage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def compose_dirs(
    paths: list[Path],
    weights: list[float] | None,
    output_dir: Path,
    *,
    method: Literal["stack", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune"] | None = None,
    rank: int | None = None,
    max_rank: int = 64,
    density: float | None = None,
    majority_sign: Literal["total", "frequency"] = "total",
    seed: int = 0,
    svd: Literal["auto", "exact", "randomized"] = "auto",
    dtype: str | None = None,
    force: bool = False,
    parents: list[dict] | None = None,
) -> ComposeReport:
    """Compose LoRA adapters into one: ``ΔW = Σ wᵢ·ΔWᵢ``, exactly or truncated.

    Args:
        paths: local adapter directories.
        weights: one weight per adapter (negative allowed); None means 1.0 each.
        output_dir: where to write; must not exist or be empty.
        method: ``stack`` (exact, rank = sum of ranks), ``svd`` (exact best
            rank-``rank`` approximation), or ``ties``/``dare_linear``/``dare_ties``/
            ``magnitude_prune`` (dense per module, then truncated to ``rank``).
            None stacks if the result fits ``max_rank``, or runs ``svd`` when
            ``rank`` is given.
        rank: output rank for the truncating methods (default: largest input rank).
        max_rank: refuse outputs with a larger rank.
        density: fraction kept, for the merge methods (required there).
        majority_sign: sign election for ``ties``/``dare_ties``.
        seed: for the DARE methods' random drops and the randomized SVD's sketch.
        svd: how the merge methods truncate their dense result to ``rank``:
            ``exact`` (``torch.linalg.svd``), ``randomized`` (subspace
            iteration, see :func:`peft_hub.compose.lowrank.randomized_svd`),
            or ``auto`` (exact when min(d, k) ≤ 1024, else randomized).
            ``stack`` and ``svd`` are exact from the factors at any size, so
            they accept ``auto`` and ``exact`` and refuse ``randomized``.
        dtype: ``fp32``/``fp16``/``bf16`` for the output (default: the inputs').
        force: compose adapters that declare different base models.
        parents: ``{"ref", "revision"}`` per path, for lineage (default: the path, no revision).

    Returns:
        A :class:`ComposeReport`.

    Raises:
        ComposeError: bad arguments. IncompatibleAdaptersError, UnsupportedAdapterError,
        RankLimitError: see their messages.
    """
    return _compose(
        [Path(p) for p in paths], weights, Path(output_dir), method=method, rank=rank, max_rank=max_rank,
        density=density, majority_sign=majority_sign, seed=seed, svd=svd, dtype=dtype, force=force, parents=parents,
        record_method=None, record_params={},
    )


def interpolate_dirs(
    a: Path,
    b: Path,
    t: float,
    output_dir: Path,
    *,
    rank: int | None = None,
    max_rank: int = 64,
    svd: Literal["auto", "exact", "randomized"] = "auto",
    dtype: str | None = None,
    force: bool = False,
    parents: list[dict] | None = None,
) -> ComposeReport:
    """``ΔW = (1 − t)·ΔW_a + t·ΔW_b``: exact (stacked), or truncated to ``rank`` by exact SVD.

    Args:
        a, b: adapter directories; ``t=0`` gives ``a`` and ``t=1`` gives ``b``.
        t: the interpolation parameter (outside [0, 1] extrapolates).
        output_dir, rank, max_rank, dtype, force, parents: as in :func:`compose_dirs`.
        svd: as in :func:`compose_dirs`; interpolation stacks or truncates
            from the factors, which is exact at any size, so ``randomized``
            is refused.

    Returns:
        A :class:`ComposeReport` whose lineage method is ``interpolate``.
    """
    if not math.isfinite(t):
        raise ComposeError(f"t must be a finite number, got {t}")
    return _compose(
        [Path(a), Path(b)], [1.0 - t, t], Path(output_dir), method="stack" if rank is None else "svd",
        rank=rank, max_rank=max_rank, density=None, majority_sign="total", seed=0, svd=svd, dtype=dtype, force=force,
        parents=parents, record_method="interpolate", record_params={"t": t},
    )


def _check_args(
    paths: list[Path], weights: list[float], method: str | None, rank: int | None, max_rank: int,
    density: float | None, majority_sign: str, svd: str, parents: list[dict] | None, dtype: str | None,
) -> None:
    if dtype is not None:
        parse_dtype(dtype)
    if not paths:
        raise ComposeError("give at least one adapter")
    if len(weights) != len(paths):
        raise ComposeError(f"{len(paths)} adapters but {len(weights)} weights: give one weight per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise ComposeError(f"weights must be finite numbers, got {weights}")
    if all(w == 0 for w in weights):
        raise ComposeError("every weight is zero: the result would be an empty adapter")
    if method is not None and method not in METHODS:
        raise ComposeError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if method == "stack" and rank is not None:
        raise ComposeError(
            "stack is exact and its rank is the sum of the input ranks; --rank applies to svd and the merge methods"
        )
    if (rank is not None and rank < 1) or max_rank < 1:
        raise ComposeError(f"ranks must be positive (rank={rank}, max_rank={max_rank})")
    if method in MERGE_METHODS:
        if density is None or not 0 < density <= 1:
            raise ComposeError(f"{method} needs --density in (0, 1], got {density}")
    elif density is not None:
        raise ComposeError(f"--density applies to {', '.join(MERGE_METHODS)}, not {method or 'stack'}")
    if svd not in TRUNCATIONS:
        raise ComposeError(f"svd must be one of {', '.join(TRUNCATIONS)}, got {svd!r}")
    if svd == "randomized" and method not in MERGE_METHODS:
        raise ComposeError(
            f"--svd randomized applies to {', '.join(MERGE_METHODS)}; {method or 'stack/svd'} truncates exactly "
            "from the low-rank factors (milliseconds per module), so there is nothing to approximate"
        )
    if majority_sign not in ("total", "frequency"):
        raise ComposeError(f"majority_sign must be 'total' or 'frequency', got {majority_sign!r}")
    if parents is not None and len(parents) != len(paths):
        raise ComposeError(f"{len(paths)} adapters but {len(parents)} parent records")


def _plan_ranks(
    modules: list[ModulePlan], method: str | None, rank: int | None, max_rank: int
) -> tuple[str, dict[str, int]]:
    """Resolve the method and every module's output rank; refuse over-limit ranks."""
    if not modules:
        raise ComposeError("the adapters hold no LoRA factors to compose")
    if method is None:
        method = "stack" if rank is None else "svd"
    if method == "stack":
        ranks = {m.name: m.stacked_rank for m in modules}
        top = max(ranks.values())
        if top > max_rank:
            worst = max(modules, key=lambda m: m.stacked_rank)
            raise RankLimitError(
                f"stacking exactly gives rank {top} (at {worst.name}), above --max-rank {max_rank}. "
                f"Pass --rank N (e.g. --rank {max_rank}) to truncate by exact SVD and see the energy kept, "
                f"or a higher --max-rank (at least {top}) to keep it exact"
            )
        return method, ranks
    target = rank or max(max(t.rank for t in m.terms) for m in modules)
    if target > max_rank:
        raise RankLimitError(f"--rank {target} is above --max-rank {max_rank}: pass a smaller --rank N or a higher --max-rank")
    if method == "svd":
        return method, {m.name: min(target, m.stacked_rank, m.d, m.k) for m in modules}
    return method, {m.name: min(target, m.d, m.k) for m in modules}


def _output_dtype(inputs: list[AdapterInput], modules: list[ModulePlan], dtype: str | None) -> torch.dtype:
    if dtype is not None:
        return parse_dtype(dtype)
    codes = {inputs[t.adapter].header.tensors[t.key_a].dtype for m in modules for t in m.terms}
    codes |= {inputs[t.adapter].header.tensors[t.key_b].dtype for m in modules for t in m.terms}
    # Mixed or unusual inputs are written as fp32, which holds fp16 and bf16 exactly.
    return st_to_torch(codes.pop()) if len(codes) == 1 and codes <= {"F32", "F16", "BF16"} else torch.float32


def _common(inputs: list[AdapterInput], key: str) -> Any:
    values = {json.dumps(a.config.get(key)) for a in inputs}
    return json.loads(values.pop()) if len(values) == 1 else None


def _output_config(
    inputs: list[AdapterInput], modules: list[ModulePlan], ranks: dict[str, int], base_model: str | None
) -> dict[str, Any]:
    """A plain LoRA config in which every module has scale exactly 1."""
    r = Counter(ranks.values()).most_common(1)[0][0]
    rank_pattern = rank_patterns(modules, ranks, r)
    return {
        "peft_type": "LORA",
        "task_type": _common(inputs, "task_type"),
        "base_model_name_or_path": base_model,
        "revision": _common(inputs, "revision"),
        "r": r,
        "lora_alpha": r,
        "rank_pattern": rank_pattern,
        "alpha_pattern": dict(rank_pattern),
        "use_rslora": False,
        "use_dora": False,
        "target_modules": output_targets(inputs, modules),
        "fan_in_fan_out": any(bool(a.config.get("fan_in_fan_out")) for a in inputs),
        "bias": "none",
        "lora_dropout": 0.0,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def _check_output(output_dir: Path, paths: list[Path]) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ComposeError(f"{output_dir} already exists and is not an empty directory; choose another output")
    if any(output_dir.resolve() == p.resolve() for p in paths):
        raise ComposeError(f"{output_dir} is one of the inputs")


def _prepare_output(output_dir: Path) -> Path:
    """A fresh ``.NAME.incomplete`` directory beside the output, renamed into place at the end."""
    tmp = output_dir.parent / f".{output_dir.name}.incomplete"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _compose(
    paths: list[Path], weights: list[float] | None, output_dir: Path, *, method: Method | None, rank: int | None,
    max_rank: int, density: float | None, majority_sign: MajoritySign, seed: int, svd: Truncation, dtype: str | None,
    force: bool, parents: list[dict] | None, record_method: str | None, record_params: dict[str, Any],
) -> ComposeReport:
    start = time.perf_counter()
    weights = [float(w) for w in weights] if weights is not None else [1.0] * len(paths)
    _check_args(paths, weights, method, rank, max_rank, density, majority_sign, svd, parents, dtype)
    _check_output(output_dir, paths)
    inputs = [read_adapter(p) for p in paths]
    base_model = check_base_models(inputs, force)
    modules, extras = plan_modules(inputs, weights)
    method, ranks = _plan_ranks(modules, method, rank, max_rank)
    out_dtype = _output_dtype(inputs, modules, dtype)
    contributing = sorted({t.adapter for m in modules for t in m.terms})
    config = _output_config([inputs[i] for i in contributing], modules, ranks, base_model)

    params: dict[str, Any] = {**record_params, "weights": weights, "rank": rank, "max_rank": max_rank}
    if method in MERGE_METHODS:
        params |= {"density": density, "seed": seed, "svd": svd}
        if method in ("ties", "dare_ties"):
            params["majority_sign"] = majority_sign
    params |= {"dtype": dtype_name(out_dtype), "force": force}
    if record_method is not None:
        params["truncation"] = method
    refs = parents or [{"ref": str(p), "revision": None} for p in paths]
    record = lineage(
        record_method or method, params,
        [{"ref": r.get("ref", str(p)), "revision": r.get("revision"), "sha256": a.sha256, "weight": w}
         for r, p, a, w in zip(refs, paths, inputs, weights)],
    )

    tmp = _prepare_output(output_dir)
    try:
        results, carried = stream_compose(
            inputs, modules, ranks, extras, tmp / WEIGHTS_NAME, out_dtype=out_dtype,
            metadata={"format": "pt", LINEAGE_KEY: json.dumps(record)}, method=method, density=density,
            majority_sign=majority_sign, seed=seed, svd=svd,
        )
        kept = sum(r.energy_kept or 0.0 for r in results)
        total = sum(r.energy_total or 0.0 for r in results)
        fraction = 1.0 if total == 0 else min(1.0, kept / total)
        top = max(ranks.values())
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(render_card(
            record=record, base_model=base_model, rank=top, module_count=len(modules), energy_kept=fraction,
            dtype=dtype_name(out_dtype), carried=carried,
        ))
        if output_dir.exists():
            output_dir.rmdir()
        tmp.rename(output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ComposeReport(
        output_dir=output_dir, method=method, rank=top, max_rank=max_rank, energy_kept=fraction,
        module_energy={r.name: r.fraction for r in results}, module_ranks=dict(ranks),
        truncation=dict(Counter(r.truncation for r in results if r.truncation)),
        vllm_max_lora_rank=vllm_max_lora_rank(top), dtype=dtype_name(out_dtype), lineage=record,
        seconds=time.perf_counter() - start,
    )
