"""Turning ``ADAPTER[+ADAPTER…]`` arguments into one adapter directory.

A ref that names an existing directory is used as is; anything else is
pulled through the hub client. Several adapters are composed first by
:func:`peft_hub.compose.compose_dirs` into a scratch directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peft_hub.errors import InvalidInputError


@dataclass
class ResolvedAdapter:
    """One adapter argument, and where its files are."""

    ref: str
    path: Path
    repo_id: str | None = None  # set when pulled from the hub
    revision: str | None = None

    @property
    def from_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def pinned(self) -> str | None:
        """``owner/name@revision`` for hub adapters: evals go to the exact revision that was pulled."""
        if self.repo_id is None:
            return None
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def split_spec(spec: str | Sequence[str]) -> list[str]:
    """``"a+b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (empty parts are an error).

    A string naming an existing directory is one adapter, even with a ``+`` in its name.
    """
    if isinstance(spec, str) and Path(spec).expanduser().is_dir():
        return [spec]
    parts = spec.split("+") if isinstance(spec, str) else list(spec)
    parts = [p.strip() for p in parts]
    if not parts or any(not p for p in parts):
        raise InvalidInputError(f"invalid adapter list {spec!r}: expected ADAPTER[+ADAPTER...]")
    return parts


def resolve_ref(ref: str, client: Any = None) -> ResolvedAdapter:
    """A local directory as is, otherwise ``client.pull(ref)``."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return ResolvedAdapter(ref=ref, path=path)
    if client is None:
        raise InvalidInputError(f"{ref!r} is not a directory, and no hub client is available to pull it")
    pulled = client.pull(ref)
    return ResolvedAdapter(
        ref=ref, path=Path(pulled.path), repo_id=getattr(pulled, "repo_id", None),
        revision=getattr(pulled, "revision", None),
    )


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
        raise InvalidInputError(f"composing several adapters needs peft_hub.compose, which failed to import: {exc}") from exc
    out = scratch / "composed"
    parents = [{"ref": r.repo_id or r.ref, "revision": r.revision} for r in resolved]
    compose_dirs([r.path for r in resolved], ws, out, method=method, rank=rank, density=density, parents=parents)
    return out, resolved, 1.0
