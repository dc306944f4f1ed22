"""Turn ``A+B+C`` arguments into local adapter directories (no torch).

A ref is an existing local directory (used as is, no revision), or anything
the hub client understands (``owner/name``, ``owner/name@rev``, a bare name
in the caller's namespace), which ``client.pull`` resolves and downloads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_hub.errors import InvalidInputError


@dataclass(frozen=True)
class ResolvedRef:
    """A ref made local: where it is, and what to record as its lineage."""

    path: Path
    ref: str  # "owner/name" for hub adapters, the path as given for local ones
    revision: str | None  # 40-hex for hub adapters, None for local ones

    def parent(self) -> dict[str, Any]:
        """The ``parents`` entry :func:`peft_hub.compose.compose_dirs` takes."""
        return {"ref": self.ref, "revision": self.revision}


def split_refs(spec: str) -> list[str]:
    """``"a+b+c"`` to ``["a", "b", "c"]``; an existing directory whose name has a ``+`` stays whole."""
    if Path(spec).is_dir():
        return [spec]
    refs = [part.strip() for part in spec.split("+")]
    if not all(refs):
        raise InvalidInputError(f"cannot read adapters from {spec!r}: expected A+B[+C...]")
    return refs


def resolve_ref(ref: str, client: Any | None) -> ResolvedRef:
    """Resolve one ref to a local adapter directory.

    Args:
        ref: a local directory or a hub ref.
        client: an object with ``pull(ref)`` returning ``.path``, ``.repo_id``
            and ``.revision`` (a :class:`peft_hub.client.HubClient`), or None.

    Returns:
        The :class:`ResolvedRef`.
    """
    if Path(ref).is_dir():
        return ResolvedRef(Path(ref), ref, None)
    if client is None:
        raise InvalidInputError(f"{ref!r} is not a local directory, and no hub client is configured to pull it")
    pulled = client.pull(ref)
    return ResolvedRef(Path(pulled.path), pulled.repo_id, pulled.revision)


def default_output(refs: list[str], method: str) -> Path:
    """``support+legal.svd`` in the current directory, from the refs' last path parts."""
    names = [re.sub(r"[^A-Za-z0-9._-]", "_", Path(r.split("@")[0]).name or "adapter") for r in refs]
    return Path("+".join(names) + f".{method}")
