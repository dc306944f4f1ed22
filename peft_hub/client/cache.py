"""The local cache: blobs by sha256, plus snapshot directories per revision.

A blob is written to a ``<sha>.<random>.incomplete`` file, hashed as it
arrives, and renamed into place only when its digest matches, so the cache
never holds a bad file. Pulling again, or pulling another revision that shares
files, reads from here.

Every name that becomes part of a path here (a sha256, a revision id, a file
name) is checked first: they come from the hub, and a path must never be
steered by it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

from peft_hub.adapter import validate_repo_id
from peft_hub.errors import InvalidAdapterError
from peft_hub.paths import cache_dir

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


class BlobCache:
    """Blobs under ``root/blobs/<sha256>``; snapshots under ``root/snapshots``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root else cache_dir()

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / check_sha256(sha256)

    def has(self, sha256: str, size: int) -> bool:
        path = self.blob_path(sha256)
        return path.is_file() and path.stat().st_size == size

    def incomplete_path(self, sha256: str) -> Path:
        """A new, empty temporary file for one download of ``sha256`` (unique, so
        two pulls of the same blob never write into each other's file)."""
        blobs = self.root / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{check_sha256(sha256)}.", suffix=".incomplete", dir=blobs)
        os.close(fd)
        return Path(name)

    def snapshot_path(self, repo_id: str, revision: str) -> Path:
        owner, name = validate_repo_id(repo_id)
        return self.root / "snapshots" / owner / name / check_revision(revision)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link a cached blob into a directory, copying across filesystems."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def assemble(files: dict[str, Path], target: Path, *, link: bool = False) -> Path:
    """Atomically make ``target`` a directory holding exactly ``files``.

    The directory is built beside the target and renamed into place; an
    existing target is swapped out only after the new one is complete.
    Snapshots inside the cache hard-link blobs; directories handed to the
    user get copies, so editing them can never corrupt the cache.
    """
    target = Path(target)
    for name in files:  # callers check names already; this keeps every write inside the target
        check_name(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".incomplete", dir=target.parent))
    try:
        for name, src in files.items():
            (link_or_copy if link else shutil.copyfile)(src, staging / name)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
