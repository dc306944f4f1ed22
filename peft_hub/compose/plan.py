"""Read adapters' configs and headers and plan the work, before any tensor is loaded.

Every refusal is raised here, so a bad request fails in milliseconds rather
than after minutes of math. Nothing in this module imports torch.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_hub.adapter import LORA_KEY, PEFT_PREFIX, check_lora_shapes, parse_config, pattern_value, sha256_file
from peft_hub.adapter_files import CONFIG_NAME, WEIGHTS_NAME
from peft_hub.compose.spec import ComposeOptions, check_config, module_scale
from peft_hub.errors import (
    ComposeError,
    IncompatibleAdaptersError,
    InvalidAdapterError,
    RankLimitError,
    UnsupportedAdapterError,
)
from peft_hub.safetensors_header import CONVERT_HINT, SafetensorsHeader, read_header_path

#: The dtypes PEFT saves LoRA factors in; others (ints, F8, F4) are no weights to add up.
FACTOR_DTYPES = ("F16", "BF16", "F32", "F64")
# Full copies of an embedding saved by PEFT's save_embedding_layers: not a delta.
_BASE_LAYER_KEY = re.compile(r"^.+\.base_layer\.weight$")


@dataclass
class AdapterInput:
    """One input adapter, read but not loaded."""

    path: Path
    config: dict[str, Any]
    header: SafetensorsHeader
    sha256: str

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_NAME


@dataclass(frozen=True)
class Term:
    """One adapter's contribution ``weight·scale·B·A`` to one module."""

    adapter: int  # index into the inputs
    key_a: str
    key_b: str
    rank: int
    scale: float  # lora_alpha / r, or lora_alpha / √r with rslora
    weight: float


@dataclass
class ModulePlan:
    """One output module: its shape and the terms that feed it."""

    name: str  # as PEFT names it for rank_pattern, e.g. model.layers.0.self_attn.q_proj
    prefix: str  # key prefix in the safetensors file
    embedding: bool
    a_shape: tuple[int, ...]  # (r, k, ...) of the inputs; k... kept for conv layers
    b_shape: tuple[int, ...]  # (d, r, ...) of the inputs
    terms: list[Term] = field(default_factory=list)
    source: str = ""  # the adapter it was first seen in, for messages

    @property
    def d(self) -> int:
        return self.b_shape[0]

    @property
    def k(self) -> int:
        return math.prod(self.a_shape[1:])

    @property
    def stacked_rank(self) -> int:
        return sum(t.rank for t in self.terms)

    def out_keys(self) -> tuple[str, str]:
        if self.embedding:
            return f"{self.prefix}.lora_embedding_A", f"{self.prefix}.lora_embedding_B"
        return f"{self.prefix}.lora_A.weight", f"{self.prefix}.lora_B.weight"

    def out_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the output A and B at ``rank``."""
        return (rank, *self.a_shape[1:]), (self.b_shape[0], rank, *self.b_shape[2:])


def read_adapter(path: Path) -> AdapterInput:
    """Read and check one adapter directory; refuse anything not linearly composable.

    Raises:
        InvalidAdapterError: files missing or malformed.
        UnsupportedAdapterError: not LoRA, or a LoRA variant that is not a plain delta.
    """
    path = Path(path)
    config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
    if not config_path.is_file():
        raise InvalidAdapterError(f"{path}: {CONFIG_NAME} is missing")
    if not weights_path.is_file():
        hint = f" {CONVERT_HINT}" if (path / "adapter_model.bin").exists() else ""
        raise InvalidAdapterError(f"{path}: {WEIGHTS_NAME} is missing.{hint}")
    config = parse_config(config_path.read_bytes())
    check_config(config, str(path))
    header = read_header_path(weights_path)
    check_lora_shapes(config, header)
    return AdapterInput(path=path, config=config, header=header, sha256=sha256_file(weights_path))


def check_base_models(bases: list[tuple[str, str | None]], force: bool) -> str | None:
    """The common base model of ``(adapter, base model)`` pairs, or an error naming the ones that differ."""
    if len({base for _, base in bases}) > 1 and not force:
        listing = ", ".join(f"{where} -> {base!r}" for where, base in bases)
        raise IncompatibleAdaptersError(
            f"the adapters were trained on different base models ({listing}); pass --force (force=True) "
            "if they really share one"
        )
    return bases[0][1]


@dataclass(frozen=True)
class LoraPair:
    """One module's A and B factors in one adapter's header."""

    prefix: str  # the key prefix, e.g. base_model.model.model.layers.0.self_attn.q_proj
    embedding: bool
    key_a: str
    a_shape: tuple[int, ...]  # (r, k, ...)
    key_b: str
    b_shape: tuple[int, ...]  # (d, r, ...)

    @property
    def name(self) -> str:
        return self.prefix.removeprefix(PEFT_PREFIX)


def lora_pairs(header: SafetensorsHeader, where: str) -> tuple[list[LoraPair], list[str]]:
    """Pair every module's factors; a header-only check, shared with the hub's compose preview.

    Returns:
        The pairs, and the keys of full tensors to carry through (saved embedding base layers).

    Raises:
        UnsupportedAdapterError: a tensor is neither a LoRA factor nor a base-layer copy, or B has a kernel.
        InvalidAdapterError: a module has one factor but not the other.
    """
    slots: dict[str, dict[str, Any]] = {}
    extras: list[str] = []
    for key, info in header.tensors.items():
        m = LORA_KEY.match(key)
        if m is None:
            if _BASE_LAYER_KEY.match(key):
                extras.append(key)
                continue
            what = "DoRA magnitude vector" if "lora_magnitude_vector" in key else "tensor"
            raise UnsupportedAdapterError(f"{where}: {what} {key!r} is not a LoRA factor and cannot be composed")
        if info.dtype not in FACTOR_DTYPES:
            raise UnsupportedAdapterError(
                f"{where}: {key!r} is {info.dtype}; LoRA factors compose only in {', '.join(FACTOR_DTYPES)}"
            )
        slot = slots.setdefault(m["module"], {"embedding": bool(m["emb"])})
        slot[m["part"]] = (key, info.shape)
    pairs = []
    for prefix, slot in slots.items():
        if "A" not in slot or "B" not in slot:
            raise InvalidAdapterError(f"{where}: {prefix} has lora_{'A' if 'A' in slot else 'B'} but not the other")
        (key_a, a_shape), (key_b, b_shape) = slot["A"], slot["B"]
        for key, shape in ((key_a, a_shape), (key_b, b_shape)):
            if len(shape) < 2:  # A is (r, k[, kh, kw]), B (d, r[, 1, 1])
                raise InvalidAdapterError(f"{where}: {key} has shape {list(shape)}; a LoRA factor is at least 2-D")
        if any(n != 1 for n in b_shape[2:]):
            raise UnsupportedAdapterError(f"{where}: {key_b} has a kernel {list(b_shape)}; only 1x1 lora_B composes")
        pairs.append(LoraPair(prefix, slot["embedding"], key_a, tuple(a_shape), key_b, tuple(b_shape)))
    return pairs, extras


def place(modules: dict[str, ModulePlan], pair: LoraPair, where: str) -> ModulePlan:
    """The plan of ``pair``'s module (created on first sight); its shapes must agree with earlier adapters'.

    Raises:
        IncompatibleAdaptersError: the module has other shapes in an earlier adapter.
    """
    plan = modules.setdefault(pair.prefix, ModulePlan(pair.name, pair.prefix, pair.embedding, pair.a_shape,
                                                      pair.b_shape, source=where))
    if (plan.embedding, plan.a_shape[1:], plan.b_shape[:1], plan.b_shape[2:]) != (
        pair.embedding, pair.a_shape[1:], pair.b_shape[:1], pair.b_shape[2:]
    ):
        raise IncompatibleAdaptersError(
            f"{pair.name} has A {list(pair.a_shape)} / B {list(pair.b_shape)} in {where} but "
            f"A {list(plan.a_shape)} / B {list(plan.b_shape)} in {plan.source or 'another adapter'}: "
            "the shapes do not match"
        )
    return plan


def plan_modules(inputs: list[AdapterInput], weights: list[float]) -> tuple[list[ModulePlan], list[tuple[int, str]]]:
    """Group every adapter's LoRA tensors by module and check that shapes agree.

    Adapters with weight exactly 0 contribute no terms.

    Returns:
        The modules in a stable order (by name), and ``(adapter, key)`` for
        every non-LoRA tensor to carry through (saved embedding base layers).

    Raises:
        IncompatibleAdaptersError: a module has different shapes in two adapters.
        UnsupportedAdapterError: a tensor is neither a LoRA factor nor a base-layer copy.
    """
    modules: dict[str, ModulePlan] = {}
    extras: list[tuple[int, str]] = []
    for i, (adapter, w) in enumerate(zip(inputs, weights, strict=True)):
        pairs, carried = lora_pairs(adapter.header, str(adapter.path))
        extras += [(i, key) for key in carried]
        for pair in pairs:
            rank, scale = module_scale(adapter.config, pair.name)
            plan = place(modules, pair, str(adapter.path))
            if w != 0:
                plan.terms.append(Term(i, pair.key_a, pair.key_b, rank, scale, w))
    planned = [modules[p] for p in sorted(modules) if modules[p].terms]
    return planned, extras


def plan_ranks(modules: list[ModulePlan], options: ComposeOptions) -> tuple[str, dict[str, int]]:
    """Resolve the method and every module's output rank; refuse over-limit ranks.

    Raises:
        ComposeError: no modules. RankLimitError: an output rank above ``options.max_rank``.
    """
    if not modules:
        raise ComposeError("the adapters hold no LoRA factors to compose")
    method, ranks = options.resolved_method, output_ranks(modules, options)
    max_rank = options.max_rank
    if method == "stack":
        top = max(ranks.values())
        if top > max_rank:
            worst = max(modules, key=lambda m: m.stacked_rank)
            raise RankLimitError(
                f"stacking exactly gives rank {top} (at {worst.name}), above --max-rank {max_rank}. "
                f"Pass --rank N (e.g. --rank {max_rank}) to truncate by exact SVD and see the energy kept, "
                f"or a higher --max-rank (at least {top}) to keep it exact"
            )
    elif (target := _target_rank(modules, options)) > max_rank:
        raise RankLimitError(
            f"--rank {target} is above --max-rank {max_rank}: pass a smaller --rank N or a higher --max-rank"
        )
    if method not in ("stack", "svd"):
        check_dense_memory(modules, method)
    return method, ranks


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_dense_memory(modules: list[ModulePlan], method: str) -> None:
    """Refuse a dense merge whose fp32 task deltas (one ``(d, k)`` per term) could never fit in memory.

    The factors' shapes are the adapter's word: a 32 MB adapter can claim a
    module of 2^20 x 2^20, whose dense delta is 4 TiB.

    Raises:
        ComposeError: naming the module and the sizes.
    """
    memory = physical_memory()
    if memory is None:
        return
    worst = max(modules, key=lambda m: len(m.terms) * m.d * m.k)
    need = len(worst.terms) * worst.d * worst.k * 4
    if need > memory:
        raise ComposeError(
            f"{method} works on the dense delta of each module, and {worst.name} is {worst.d} x {worst.k}: "
            f"{len(worst.terms)} fp32 task deltas need {need / 2**30:.1f} GiB, more than this machine's "
            f"{memory / 2**30:.1f} GiB; stack and svd work from the factors at any size"
        )


def output_ranks(modules: list[ModulePlan], options: ComposeOptions) -> dict[str, int]:
    """Each module's output rank under ``options``, before the ``max_rank`` check."""
    method = options.resolved_method
    if method == "stack":
        return {m.name: m.stacked_rank for m in modules}
    target = _target_rank(modules, options)
    if method == "svd":
        return {m.name: min(target, m.stacked_rank, m.d, m.k) for m in modules}
    return {m.name: min(target, m.d, m.k) for m in modules}


def _target_rank(modules: list[ModulePlan], options: ComposeOptions) -> int:
    return options.rank or max(max(t.rank for t in m.terms) for m in modules)


def output_targets(inputs: list[AdapterInput], modules: list[ModulePlan]) -> list[str] | str:
    """``target_modules`` for the output that selects exactly the output's modules.

    The union of the inputs' targets is exact when no input narrows its
    targets further (layers_to_transform, exclude_modules); otherwise the
    module names themselves are listed.
    """
    narrowed = any(a.config.get("layers_to_transform") is not None or a.config.get("exclude_modules") for a in inputs)
    targets: list[Any] = [a.config.get("target_modules") for a in inputs]  # JSON: None, a string or a list
    # "all-linear" is a PEFT shorthand resolved against the model, which compose never sees.
    if narrowed or any(t is None or t == "all-linear" for t in targets):
        return sorted(m.name for m in modules)
    if all(isinstance(t, list) for t in targets):
        return sorted({str(x) for t in targets for x in t})
    # PEFT fullmatches a string target; a list entry x matches "x" or "….x".
    parts = [t if isinstance(t, str) else r"(.*\.)?(" + "|".join(re.escape(x) for x in t) + ")" for t in targets]
    return "|".join(f"({p})" for p in parts)


def rank_patterns(modules: list[ModulePlan], ranks: dict[str, int], r: int) -> dict[str, int]:
    """A ``rank_pattern`` giving each module its rank under PEFT's matching rule.

    Module names are used as keys; the result is checked with
    :func:`pattern_value` and falls back to listing every module, escaped and
    longest first, if a short key would also match another module.
    """
    pattern = {m.name: ranks[m.name] for m in modules if ranks[m.name] != r}
    if all(pattern_value(pattern, m.name, r) == ranks[m.name] for m in modules):
        return pattern
    ordered = sorted(modules, key=lambda m: len(m.name), reverse=True)
    return {re.escape(m.name): ranks[m.name] for m in ordered}

