"""The public API: compose adapter directories into a new PEFT LoRA directory."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peft_hub.adapter import vllm_max_lora_rank
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from peft_hub.compose.card import LINEAGE_KEY, lineage, render_card
from peft_hub.compose.engine import stream_compose
from peft_hub.compose.io import dtype_name, parse_dtype, st_to_torch
from peft_hub.compose.plan import (
    AdapterInput,
    ModulePlan,
    check_base_models,
    output_targets,
    plan_modules,
    plan_ranks,
    rank_patterns,
    read_adapter,
)
from peft_hub.compose.spec import METHODS, ComposeOptions, check_weights
from peft_hub.errors import ComposeError
from peft_hub.modelcard import CARD_NAME
from peft_hub.outdir import OutputDir, plan_output

__all__ = ["METHODS", "ComposeOptions", "ComposeReport", "compose_dirs", "interpolate_dirs"]

#: The options interpolation takes; the method follows from ``rank``.
_INTERPOLATE_OPTIONS = frozenset({"rank", "max_rank", "svd", "dtype", "force"})


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
    # Dense methods: how many modules each SVD kind ("exact", "randomized") truncated.
    truncation: dict[str, int] = field(default_factory=dict)
    vllm_max_lora_rank: int | None = None
    dtype: str = "fp32"
    lineage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def compose_dirs(
    paths: list[Path],
    weights: list[float] | None,
    output_dir: Path,
    options: ComposeOptions | None = None,
    *,
    parents: list[dict] | None = None,
    into_existing: bool = False,
    **settings: Any,
) -> ComposeReport:
    """Compose LoRA adapters into one: ``ΔW = Σ wᵢ·ΔWᵢ``, exactly or truncated.

    Args:
        paths: local adapter directories.
        weights: one weight per adapter (negative allowed); None means 1.0 each.
        output_dir: where to write: a new or empty directory, or an earlier
            compose output (updated in place); see :mod:`peft_hub.outdir`.
        options: how to compose (see :class:`~peft_hub.compose.spec.ComposeOptions`);
            default: stack exactly if the result fits ``max_rank=64``.
        parents: ``{"ref", "revision"}`` per path, for lineage (default: the path, no revision).
        into_existing: write into a non-empty directory holding something else (nothing there is deleted).
        settings: :class:`ComposeOptions` fields by name (``method="svd", rank=8``),
            replacing those of ``options``.

    Returns:
        A :class:`ComposeReport`.

    Raises:
        ComposeError: bad arguments. IncompatibleAdaptersError, UnsupportedAdapterError,
        RankLimitError: see their messages.
    """
    return _compose(
        [Path(p) for p in paths], weights, Path(output_dir), ComposeOptions.of(options, **settings), parents=parents,
        into_existing=into_existing,
    )


def interpolate_dirs(
    a: Path,
    b: Path,
    t: float,
    output_dir: Path,
    options: ComposeOptions | None = None,
    *,
    parents: list[dict] | None = None,
    into_existing: bool = False,
    **settings: Any,
) -> ComposeReport:
    """``ΔW = (1 − t)·ΔW_a + t·ΔW_b``: exact (stacked), or truncated to ``rank`` by exact SVD.

    Args:
        a, b: adapter directories; ``t=0`` gives ``a`` and ``t=1`` gives ``b``.
        t: the interpolation parameter (outside [0, 1] extrapolates).
        output_dir, parents, into_existing: as in :func:`compose_dirs`.
        options, settings: as in :func:`compose_dirs`, limited to ``rank``,
            ``max_rank``, ``svd``, ``dtype`` and ``force``. Interpolation stacks
            or truncates from the factors, which is exact at any size, so
            ``svd="randomized"`` is refused.

    Returns:
        A :class:`ComposeReport` whose lineage method is ``interpolate``.
    """
    if not isinstance(t, (int, float)) or not math.isfinite(t):
        raise ComposeError(f"t must be a finite number, got {t}")
    given = ComposeOptions.of(options, **settings)
    default = ComposeOptions()
    other = sorted(k for k in ("method", "density", "majority_sign", "seed")
                   if getattr(given, k) != getattr(default, k))
    if other:
        raise ComposeError(f"interpolate takes {', '.join(sorted(_INTERPOLATE_OPTIONS))}, not {other[0]}")
    chosen = ComposeOptions.of(given, method="stack" if given.rank is None else "svd")
    return _compose(
        [Path(a), Path(b)], [1.0 - t, t], Path(output_dir), chosen, parents=parents,
        record_method="interpolate", record_params={"t": t}, into_existing=into_existing,
    )


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


def _check_output(output_dir: Path, paths: list[Path], into_existing: bool) -> OutputDir:
    """The output under :mod:`peft_hub.outdir`'s rule: new, empty, an earlier compose output, or ``into_existing``."""
    return plan_output(output_dir, kind="compose", identity="compose", into_existing=into_existing, inputs=paths,
                       error=ComposeError)


def _compose(
    paths: list[Path], weights: list[float] | None, output_dir: Path, options: ComposeOptions, *,
    parents: list[dict] | None, record_method: str | None = None, record_params: dict[str, Any] | None = None,
    into_existing: bool = False,
) -> ComposeReport:
    start = time.perf_counter()
    options.check()
    weights = check_weights(weights, len(paths))
    if parents is not None and len(parents) != len(paths):
        raise ComposeError(f"{len(paths)} adapters but {len(parents)} parent records")
    out = _check_output(output_dir, paths, into_existing)
    inputs = [read_adapter(p) for p in paths]
    bases = [(str(a.path), a.config.get("base_model_name_or_path")) for a in inputs]
    base_model = check_base_models(bases, options.force)
    modules, extras = plan_modules(inputs, weights)
    method, ranks = plan_ranks(modules, options)
    out_dtype = _output_dtype(inputs, modules, options.dtype)
    contributing = sorted({t.adapter for m in modules for t in m.terms})
    config = _output_config([inputs[i] for i in contributing], modules, ranks, base_model)

    params = {**(record_params or {}), **options.record(method, weights, dtype_name(out_dtype))}
    if record_method is not None:
        params["truncation"] = method
    refs = parents or [{"ref": str(p), "revision": None} for p in paths]
    record = lineage(
        record_method or method, params,
        [{"ref": r.get("ref", str(p)), "revision": r.get("revision"), "sha256": a.sha256, "weight": w}
         for r, p, a, w in zip(refs, paths, inputs, weights, strict=True)],
    )

    tmp = out.stage()
    try:
        results, carried = stream_compose(
            inputs, modules, ranks, extras, tmp / WEIGHTS_NAME, out_dtype=out_dtype,
            metadata={"format": "pt", LINEAGE_KEY: json.dumps(record)},
            options=ComposeOptions.of(options, method=method),
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
        out.commit()
    finally:
        out.abort()
    return ComposeReport(
        output_dir=output_dir, method=method, rank=top, max_rank=options.max_rank, energy_kept=fraction,
        module_energy={r.name: r.fraction for r in results}, module_ranks=dict(ranks),
        truncation=dict(Counter(r.truncation for r in results if r.truncation)),
        vllm_max_lora_rank=vllm_max_lora_rank(top), dtype=dtype_name(out_dtype), lineage=record,
        seconds=time.perf_counter() - start,
    )
