"""Turning ``ADAPTER[+ADAPTER…]`` arguments into one adapter directory.

A ref written as a path (``./x``, ``/x``, ``~/x``) is used as is; ``name``
and ``owner/name`` are pulled through the hub client (the rule of
:mod:`peft_hub.refs`). Several adapters are composed first by
:func:`peft_hub.compose.compose_dirs` into a scratch directory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft_hub.errors import InvalidInputError
from peft_hub.refs import ResolvedRef, is_local, resolve_ref, split_refs

#: One adapter argument and where its files are (the shared :class:`peft_hub.refs.ResolvedRef`).
ResolvedAdapter = ResolvedRef


def resolve_base(base: str | Path, client: Any = None) -> ResolvedRef:
    """The base model argument made local: a path (``./x``, ``/x``, ``~/x``, a
    ``Path``) is used as is; ``owner/name[@revision]`` is pulled through the
    client's cache, as adapter refs are."""
    if is_local(base) and not Path(base).expanduser().is_dir():
        raise InvalidInputError(f"base model {base} is not a directory")
    return resolve_ref(base, client)


def split_spec(spec: str | Sequence[str]) -> list[str]:
    """``"a+b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (empty parts are an error).

    A local directory (written as a path) is one adapter, even with a ``+`` in its name.
    """
    return split_refs(spec)


def parse_weights(weights: str | Sequence[float] | None, n: int) -> list[float] | None:
    """``"0.5,0.5"`` or a list -> floats, one per adapter."""
    if weights is None:
        return None
    if isinstance(weights, str):
        try:
            weights = [float(w) for w in weights.split(",") if w.strip()]
        except ValueError:
            raise InvalidInputError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    weights = [float(w) for w in weights]
    if not all(math.isfinite(w) for w in weights):
        raise InvalidInputError(f"--weights must be finite numbers, got {weights}")
    if len(weights) != n:
        raise InvalidInputError(f"{len(weights)} weights given for {n} adapter(s)")
    return weights


def resolve_adapters(
    spec: str | Sequence[str],
    *,
    scratch: Path,
    weights: str | Sequence[float] | None = None,
    method: str | None = None,
    rank: int | None = None,
    density: float | None = None,
    client: Any = None,
) -> tuple[Path, list[ResolvedAdapter], float]:
    """Resolve ``ADAPTER[+ADAPTER…]`` to one LoRA directory.

    Args:
        spec: the adapter argument, or its parts.
        scratch: an empty directory for the composed adapter (caller cleans it up).
        weights: one weight per adapter. With a single adapter the weight
            scales its delta; with several it goes to ``compose_dirs``.
        method, rank, density: passed to ``compose_dirs`` (``None``: its defaults).
        client: a ``HubClient`` for refs that are not directories.

    Returns:
        ``(adapter_dir, resolved parents, weight to merge the result with)``.
    """
    refs = split_spec(spec)
    resolved = [resolve_ref(ref, client) for ref in refs]
    ws = parse_weights(weights, len(refs))
    if len(resolved) == 1:
        return resolved[0].path, resolved, ws[0] if ws else 1.0
    try:
        from peft_hub.compose import compose_dirs
    except ImportError as exc:
        raise InvalidInputError(
            f"composing several adapters needs peft_hub.compose, which failed to import: {exc}"
        ) from exc
    out = scratch / "composed"
    parents = [{"ref": r.repo_id or r.ref, "revision": r.revision} for r in resolved]
    compose_dirs([r.path for r in resolved], ws, out, method=method, rank=rank, density=density, parents=parents)
    return out, resolved, 1.0
