"""Adapter references, one rule for every command (no torch, no hub).

A ref is **local only when written as a path**: it starts with ``./``,
``../``, ``/`` or ``~`` (or is ``.``/``..``), or is a ``Path`` object.
``name`` and ``owner/name[@tag-or-revision]`` always mean the hub, even
when a directory of that name is in the current directory; then one line
on stderr says so (``using hub admin/support; for the local directory
write ./support``). A string that can never be a hub ref (``a/b/c``, an
upper-case name) and names an existing directory is read as a path too:
nothing else could be meant.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peft_hub.errors import InvalidInputError, InvalidNameError, PeftHubError
from peft_hub.names import validate_namespace, validate_repo_id

_PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")


def _check_part(part: object, what: str) -> str:
    # The owner can come from the hub (``whoami`` fills in a bare name), and
    # both halves end up in cache paths, so every Ref checks them again.
    if not isinstance(part, str) or "\n" in part:
        raise InvalidNameError(f"invalid {what} {part!r:.80}")
    return validate_namespace(part, what=what)


@dataclass(frozen=True)
class Ref:
    """A parsed hub reference; ``owner`` is None for a bare name."""

    owner: str | None
    name: str
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.owner is not None:
            _check_part(self.owner, "owner")
        _check_part(self.name, "name")
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision.isprintable()):
            raise InvalidNameError(f"invalid revision {self.revision!r:.80}")

    @property
    def repo_id(self) -> str:
        if self.owner is None:
            raise InvalidNameError(f"{self.name!r} has no owner")
        return f"{self.owner}/{self.name}"

    def __str__(self) -> str:
        base = self.name if self.owner is None else self.repo_id
        return base if self.revision is None else f"{base}@{self.revision}"


def parse_ref(ref: str) -> Ref:
    """Parse ``owner/name[@rev]`` or ``name[@rev]``; checks every part."""
    if not isinstance(ref, str):
        raise InvalidNameError(f"invalid adapter ref {ref!r:.80}")
    base, sep, revision = ref.partition("@")
    if sep and not revision:
        raise InvalidNameError(f"{ref!r}: nothing after '@'")
    if "/" in base:
        owner, name = validate_repo_id(base)
        return Ref(owner, name, revision or None)
    return Ref(None, validate_namespace(base), revision or None)


def is_path_ref(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` is written as a path (so it is local, never the hub)."""
    if isinstance(ref, os.PathLike):
        return True
    return ref in (".", "..") or ref.startswith(_PATH_PREFIXES)


def _is_hub_ref(ref: str) -> bool:
    try:
        parse_ref(ref)
    except PeftHubError:
        return False
    return True


def is_local(ref: str | os.PathLike[str]) -> bool:
    """Whether ``ref`` names a local directory under the rule above (it need not exist)."""
    if is_path_ref(ref):
        return True
    return not _is_hub_ref(str(ref)) and Path(ref).is_dir()


def split_refs(spec: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """``"a+b+c"`` (or ``["a", "b", "c"]``) to ``["a", "b", "c"]``.

    A local directory whose name holds a ``+`` stays whole; empty parts are an error.
    """
    if isinstance(spec, (str, os.PathLike)) and is_local(spec) and Path(spec).expanduser().is_dir():
        return [os.fspath(spec)]
    if isinstance(spec, os.PathLike):
        parts = [os.fspath(spec)]  # a path object names one local directory, never a "+" list
    else:
        parts = spec.split("+") if isinstance(spec, str) else [os.fspath(p) for p in spec]
    parts = [p.strip() for p in parts]
    if not parts or not all(parts):
        raise InvalidInputError(f"cannot read adapters from {spec!r:.200}: expected A+B[+C...]")
    return parts


@dataclass
class ResolvedRef:
    """One adapter argument made local: what was typed, where its files are, where they came from."""

    ref: str
    path: Path
    repo_id: str | None = None  # set when pulled from the hub
    revision: str | None = None  # the full 40-hex revision, for hub adapters

    @property
    def from_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def pinned(self) -> str | None:
        """``owner/name@revision`` for hub adapters: evals go to the exact revision that was pulled."""
        if self.repo_id is None:
            return None
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    def parent(self) -> dict[str, Any]:
        """The lineage entry: ``owner/name`` and revision for the hub, the path as typed for local ones."""
        return {"ref": self.repo_id or self.ref, "revision": self.revision}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # the one-line note of the rule above


def resolve_ref(
    ref: str | os.PathLike[str], client: Any = None, *, note: Callable[[str], None] = _stderr,
) -> ResolvedRef:
    """Resolve one ref to a local adapter directory.

    Args:
        ref: a path (local) or a hub ref, under the rule of this module.
        client: an object with ``pull(ref)`` returning ``.path``, ``.repo_id``
            and ``.revision`` (a :class:`peft_hub.client.HubClient`), or None.
        note: where the one-line "using hub …" note goes.

    Returns:
        The :class:`ResolvedRef`.
    """
    text = os.fspath(ref)
    if is_local(ref):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise InvalidInputError(f"{text} is not a directory")
        return ResolvedRef(text, path)
    parse_ref(text)  # a clear error for a ref that is neither a path nor a hub name
    if client is None:
        raise InvalidInputError(f"{text!r} is a hub ref, and no hub client is configured to pull it "
                                f"(for a local directory write ./{text})")
    pulled = client.pull(text)
    local = text.partition("@")[0]
    if Path(local).is_dir():
        note(f"using hub {pulled.repo_id}; for the local directory write ./{local}")
    return ResolvedRef(text, Path(pulled.path), pulled.repo_id, pulled.revision)


def default_output(refs: Sequence[str], method: str) -> Path:
    """``support+legal.svd`` in the current directory, from the refs' last path parts."""
    names = [re.sub(r"[^A-Za-z0-9._-]", "_", Path(r.split("@")[0]).name or "adapter") for r in refs]
    return Path("+".join(names) + f".{method}")


@contextmanager
def in_user_terms(resolved: Sequence[ResolvedRef]) -> Iterator[None]:
    """Re-word an error raised by the library in the terms the user typed: a
    pulled adapter's cache path becomes its ``owner/name@revision``, and the
    library's keyword (``force=True``) the command's flag."""
    try:
        yield
    except PeftHubError as exc:
        text = exc.message
        for r in sorted(resolved, key=lambda r: -len(str(r.path))):
            if r.from_hub:
                text = text.replace(str(r.path), f"{r.repo_id}@{(r.revision or '')[:12]}".rstrip("@"))
        text = text.replace(" (force=True)", "")
        if text != exc.message:
            exc.message = text
            exc.args = (text,)
        raise
