"""Adapter references: ``owner/name[@tag-or-revision]`` or a bare ``name``."""

from __future__ import annotations

from dataclasses import dataclass

from peft_hub.adapter import validate_namespace, validate_repo_id
from peft_hub.errors import InvalidNameError


def _check_part(part: object, what: str) -> str:
    # The owner can come from the hub (``whoami`` fills in a bare name), and
    # both halves end up in cache paths, so every Ref checks them again.
    if not isinstance(part, str) or "\n" in part:
        raise InvalidNameError(f"invalid {what} {part!r:.80}")
    return validate_namespace(part, what=what)


@dataclass(frozen=True)
class Ref:
    """A parsed reference; ``owner`` is None for a bare name."""

    owner: str | None
    name: str
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.owner is not None:
            _check_part(self.owner, "owner")
        _check_part(self.name, "name")
        if self.revision is not None and not isinstance(self.revision, str):
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
    base, sep, revision = ref.partition("@")
    if sep and not revision:
        raise InvalidNameError(f"{ref!r}: nothing after '@'")
    if "/" in base:
        owner, name = validate_repo_id(base)
        return Ref(owner, name, revision or None)
    return Ref(None, validate_namespace(base), revision or None)
