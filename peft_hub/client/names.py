"""Checks on every name the hub sends that becomes part of a path here (a
sha256, a revision id, a file name): a path must never be steered by the hub."""

from __future__ import annotations

import re
import unicodedata

from peft_hub.errors import ChecksumMismatchError, InvalidAdapterError

SHA256_RE = re.compile(r"[0-9a-f]{64}")
REVISION_RE = re.compile(r"[0-9a-f]{40}")
#: Characters no portable file name holds (Windows refuses them; ':' also names drives and streams).
_FORBIDDEN = set('/\\:*?"<>|')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
MAX_NAME_BYTES = 255


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

    Refuses separators, drive letters, ``.``/``..`` and hidden names, control
    and format characters, Windows device names, and names too long for a
    file system.
    """
    if not isinstance(name, str) or not name or name.startswith(".") or name.endswith((" ", ".")):
        raise InvalidAdapterError(f"file name {name!r:.80} is not a plain file name")
    bad = next((c for c in name if c in _FORBIDDEN or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        raise InvalidAdapterError(f"file name {name!r:.80} holds the character {bad!r}")
    if name.split(".")[0].upper() in _WINDOWS_DEVICES:
        raise InvalidAdapterError(f"file name {name!r:.80} is a device name on Windows")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidAdapterError(f"file name {name[:40]!r}… is longer than {MAX_NAME_BYTES} bytes")
    return name


class BlobChangedError(ChecksumMismatchError):
    """A cached blob's bytes changed after it was checked (found while copying it)."""

    def __init__(self, message: str, sha256: str) -> None:
        super().__init__(message)
        self.sha256 = sha256
