"""Checks on every name the hub sends that becomes part of a path here (a
sha256, a revision id, a file name): a path must never be steered by the hub."""

from __future__ import annotations

import re

from peft_hub.errors import ChecksumMismatchError, InvalidAdapterError
from peft_hub.names import check_file_name

SHA256_RE = re.compile(r"[0-9a-f]{64}")
REVISION_RE = re.compile(r"[0-9a-f]{40}")


def check_sha256(value: object, what: str = "sha256") -> str:
    """``value`` if it is exactly 64 lowercase hex digits."""
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise InvalidAdapterError(f"{what} {value!r:.80} is not 64 lowercase hex digits")
    return value


def check_revision(value: object) -> str:
    """``value`` if it is a revision id: exactly 40 lowercase hex digits."""
    if not isinstance(value, str) or not REVISION_RE.fullmatch(value):
        raise InvalidAdapterError(f"revision {value!r:.80} is not 40 lowercase hex digits")
    return value


def check_name(name: object) -> str:
    """``name`` if it is one plain, portable file name that stays inside its directory.

    The hub's own rule (:func:`peft_hub.names.check_file_name`), so a name the
    hub publishes is one this client writes: no separators, drive letters,
    ``.``/``..`` or hidden names, control and format characters, Windows
    device names, or names too long for a file system.
    """
    return check_file_name(name)


class BlobChangedError(ChecksumMismatchError):
    """A cached blob's bytes changed after it was checked (found while copying it)."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256
