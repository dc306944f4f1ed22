"""The local cache: blobs by sha256, plus snapshot directories per revision.

A blob is downloaded into a ``<sha>.<random>.incomplete`` file, hashed as it
arrives, and renamed into place only when its digest matches. Cached blobs
are read-only (0444), so a snapshot (a hard link to the blob) cannot be
edited in place by mistake; directories handed to the user (``pull -o``) get
their own files, so editing them never touches the cache: a blob downloaded
now is written into the directory's staging as it arrives (a second write of
the same bytes), one already cached is copied and hashed as it is copied.
Root ignores file modes, and a file can be changed behind our back, so each
blob's verification is recorded as a stamp of its size, mtime, ctime and
inode (``verified/<sha>``): a blob whose stamp no longer matches is hashed
again before it is used, and removed (then fetched again) if it is wrong.

Temporary files and staging directories are held under an ``flock`` by the
process that writes them; whatever a killed process leaves behind is no
longer locked, and the next pull (or ``cache verify``) removes it.

Every name that becomes part of a path here (a sha256, a revision id, a file
name) is checked first (:mod:`peft_hub.client.names`): they come from the
hub, and a path must never be steered by it. Snapshots and ``pull -o``
directories are written by :mod:`peft_hub.client.assemble`.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from peft_hub.adapter import sha256_file
from peft_hub.client.names import (
    REVISION_RE,
    SHA256_RE,
    BlobChangedError,
    check_name,
    check_revision,
    check_sha256,
)
from peft_hub.errors import StorageError
from peft_hub.names import validate_repo_id
from peft_hub.paths import cache_dir
from peft_hub.progress import tqdm
from peft_hub.staging import delete, lock, scandir, staging_leftovers, sweep

_TEMP_BLOB_RE = re.compile(r"[0-9a-f]{64}\.[a-z0-9_]+\.(new|incomplete)")


# --- the cache ----------------------------------------------------------------------


def _fingerprint(st: os.stat_result) -> tuple[int, int, int, int]:
    # The ctime is in it because no one can set it back: an edit that
    # restores the mtime still changes the ctime, and so forces a new hash.
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def fingerprint(path: Path) -> tuple[int, int, int, int]:
    """The size, mtime, ctime and inode of ``path`` (not followed): any write or replacement changes it."""
    return _fingerprint(os.lstat(path))


def check_staged(staged: Path, written: dict[str, tuple[int, int, int, int]]) -> None:
    """Check files a verified download wrote straight into a staging directory (``pull -o``'s
    mirrors) before they are handed over: each must be the plain file it left, untouched since.

    Raises:
        StorageError: naming the first file that was changed or replaced.
    """
    for name, mark in written.items():
        st = os.lstat(staged / check_name(name))
        if not stat.S_ISREG(st.st_mode) or _fingerprint(st) != mark:
            raise StorageError(f"{name} changed in the staging directory before it was handed over")


@dataclass
class Partial:
    """A download in progress: its temporary file, open and locked by this process."""

    path: Path
    fh: BinaryIO


@dataclass
class Snapshot:
    """One assembled revision in the cache."""

    repo_id: str
    revision: str
    path: Path
    files: int
    size: int


@dataclass
class CacheReport:
    """What :meth:`BlobCache.verify` found, and what it removed."""

    root: Path
    blobs: int = 0
    size: int = 0
    #: sha256s of blobs whose bytes hash to something else.
    corrupt: list[str] = field(default_factory=list)
    #: Temporary files and staging directories no live process owns, stray files, stale stamps.
    leftovers: list[Path] = field(default_factory=list)
    #: Snapshots that link a corrupt blob (a repair removes them; the next pull rebuilds them).
    snapshots: list[Path] = field(default_factory=list)
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not (self.corrupt or self.leftovers or self.snapshots)


class BlobCache:
    """Blobs under ``root/blobs/<sha256>``, their verification stamps under
    ``root/verified/<sha256>``, snapshots under ``root/snapshots``."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root else cache_dir()
        #: Blobs this process downloaded and verified, with their fingerprint
        #: then (kept in memory: no other process can forge it).
        self._fresh: dict[str, tuple[int, int, int, int]] = {}

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / check_sha256(sha256)

    def stamp_path(self, sha256: str) -> Path:
        return self.root / "verified" / check_sha256(sha256)

    def snapshot_path(self, repo_id: str, revision: str) -> Path:
        owner, name = validate_repo_id(repo_id)
        return self.root / "snapshots" / owner / name / check_revision(revision)

    # --- verified blobs ---------------------------------------------------------

    def checked(self, sha256: str, size: int) -> Path | None:
        """The cached blob ``sha256`` if it holds exactly those ``size`` bytes, else None.

        A blob whose stamp still matches is trusted; any other is hashed
        again. A blob that is wrong is removed, so the caller fetches it anew.
        """
        path = self.blob_path(sha256)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            self.discard(sha256)
            return None
        if self._stamp(sha256) == _fingerprint(st):
            return path
        if st.st_mode & 0o222:  # cached before blobs were read-only
            with suppress(OSError):
                os.chmod(path, 0o444)
            st = os.lstat(path)
        if sha256_file(path) != sha256 or _fingerprint(os.lstat(path)) != _fingerprint(st):
            self.discard(sha256)  # wrong, or changed while it was hashed: fetch it again
            return None
        self._write_stamp(sha256, st)
        return path

    def has(self, sha256: str, size: int) -> bool:
        return self.checked(sha256, size) is not None

    def discard(self, sha256: str) -> None:
        """Remove a blob and its stamp (a pull rebuilds the snapshots that linked it)."""
        delete(self.stamp_path(sha256))
        delete(self.blob_path(sha256))

    def restamp(self, sha256: str) -> None:
        """Stamp a blob again after this process linked it: a link changes the
        ctime, not the bytes. Only if its size, mtime and inode are unchanged."""
        old = self._stamp(sha256)
        with suppress(FileNotFoundError):
            st = os.lstat(self.blob_path(sha256))
            now = _fingerprint(st)
            if old is not None and (old[0], old[1], old[3]) == (now[0], now[1], now[3]):
                self._write_stamp(sha256, st)

    def _stamp(self, sha256: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(v) for v in self.stamp_path(sha256).read_text().split())
        except (OSError, ValueError):
            return None

    def _write_stamp(self, sha256: str, st: os.stat_result) -> None:
        # Best effort: without a stamp (a read-only cache) the blob is hashed each time.
        stamps = self.root / "verified"
        with suppress(OSError):
            stamps.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".new", dir=stamps)
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(" ".join(map(str, _fingerprint(st))) + "\n")
                os.replace(tmp, self.stamp_path(sha256))
            finally:
                delete(Path(tmp))

    # --- downloads ----------------------------------------------------------------

    @contextmanager
    def partial(self, sha256: str) -> Iterator[Partial]:
        """A new temporary file for one download of ``sha256``: unique (two pulls of
        one blob never write into each other's file), locked while this process
        lives, and removed on the way out unless :meth:`commit` moved it into place."""
        blobs = self.root / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        # Made as .new, locked, then renamed: an .incomplete file is locked by
        # its owner for as long as the owner lives, so an unlocked one is debris.
        fd, name = tempfile.mkstemp(prefix=f"{check_sha256(sha256)}.", suffix=".new", dir=blobs)
        path = Path(name)
        try:
            with os.fdopen(fd, "w+b") as fh:
                lock(fh.fileno())
                path = path.rename(path.with_suffix(".incomplete"))
                yield Partial(path, fh)
        finally:
            delete(path)

    def commit(self, part: Partial, sha256: str) -> Path:
        """Move a verified download into place, read-only, and stamp it."""
        part.fh.flush()
        os.fsync(part.fh.fileno())  # the name must never point at bytes a crash lost
        os.chmod(part.path, 0o444)
        final = self.blob_path(sha256)
        os.replace(part.path, final)  # while still locked, so no cleanup takes it first
        st = os.lstat(final)
        self._write_stamp(sha256, st)
        self._fresh[sha256] = _fingerprint(st)
        return final

    def fresh(self, sha256: str) -> bool:
        """Whether this process verified the blob's bytes as it downloaded them,
        and its inode is unchanged since (size, mtime, ctime: a write moves the ctime)."""
        try:
            return self._fresh.get(sha256) == _fingerprint(os.lstat(self.blob_path(sha256)))
        except OSError:
            return False

    def check_fresh_copies(self, staged: Path, files: dict[str, tuple[str, int]]) -> None:
        """Check copies of fresh blobs made without hashing (in the kernel), before they are handed over.

        Each ``files`` name maps to its blob's sha256 and size. A copy is good when it is a
        plain file of the size, and its blob is still :meth:`fresh` now that the copy is done:
        then no byte of the blob changed before or during the copy, so the copy is the bytes
        that were hashed as they came.

        Raises:
            BlobChangedError: naming the first copy that cannot be trusted.
        """
        for name, (sha256, size) in files.items():
            st = os.lstat(staged / check_name(name))
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or not self.fresh(sha256):
                raise BlobChangedError(f"the cached copy of {name} changed while it was copied", sha256)

    # --- leftovers, verification, listing --------------------------------------------

    def _snapshot_dirs(self) -> list[Path]:
        """Each adapter's directory of snapshots (``snapshots/owner/name``)."""
        return [p for owner in scandir(self.root / "snapshots") for p in scandir(owner)
                if p.is_dir() and not p.is_symlink()]

    def leftovers(self, *, remove: bool = False) -> list[Path]:
        """Temporary files and staging directories that no live process owns
        (what a killed pull leaves behind); ``remove`` deletes them."""
        temp = [p for p in scandir(self.root / "blobs") if _TEMP_BLOB_RE.fullmatch(p.name)]
        temp += [p for p in scandir(self.root / "verified") if p.name.startswith(".") and p.name.endswith(".new")]
        found = sweep(iter(temp), remove)
        for adapter in self._snapshot_dirs():
            found += staging_leftovers(adapter, remove=remove)
        return found

    def snapshots(self) -> list[Snapshot]:
        """The assembled revisions in the cache."""
        out = []
        for adapter in self._snapshot_dirs():
            for path in scandir(adapter):
                if REVISION_RE.fullmatch(path.name) and path.is_dir():
                    files = [p for p in scandir(path) if p.is_file()]
                    out.append(Snapshot(f"{adapter.parent.name}/{adapter.name}", path.name, path, len(files),
                                        sum(p.stat().st_size for p in files)))
        return out

    def blobs(self) -> list[Path]:
        """The cached blobs (files named by a sha256)."""
        return [p for p in scandir(self.root / "blobs") if SHA256_RE.fullmatch(p.name)]

    def info(self) -> dict[str, Any]:
        """Where the cache is and what it holds: ``path``, ``blobs``, ``bytes``, ``snapshots``, ``leftovers``."""
        blobs = self.blobs()
        return {"path": self.root, "blobs": len(blobs), "bytes": sum(p.lstat().st_size for p in blobs),
                "snapshots": len(self.snapshots()), "leftovers": len(self.leftovers())}

    def verify(self, *, repair: bool = False) -> CacheReport:
        """Hash every cached blob and look for leftovers.

        Args:
            repair: remove corrupt blobs (and the snapshots that link them),
                leftovers and stray files, so the next pull fetches what is
                missing. Without it nothing is removed; good blobs are stamped
                either way, so pulls need not hash them again.

        Returns:
            What was found (and, with ``repair``, removed).
        """
        report = CacheReport(self.root, repaired=repair)
        blobs = self.blobs()
        bad_inodes: set[tuple[int, int]] = set()
        with tqdm(total=sum(p.lstat().st_size for p in blobs), unit="B", unit_scale=True, desc="verify") as bar:
            for path in blobs:
                st = os.lstat(path)
                report.blobs += 1
                report.size += st.st_size
                if stat.S_ISREG(st.st_mode) and sha256_file(path) == path.name:
                    if _fingerprint(os.lstat(path)) == _fingerprint(st):
                        self._write_stamp(path.name, st)
                else:
                    report.corrupt.append(path.name)
                    bad_inodes.add((st.st_dev, st.st_ino))
                bar.update(st.st_size)
        report.leftovers = self.leftovers()
        known = {p.name for p in blobs}
        for path in scandir(self.root / "blobs"):
            if path.name not in known and not _TEMP_BLOB_RE.fullmatch(path.name):
                report.leftovers.append(path)
        for path in scandir(self.root / "verified"):
            if SHA256_RE.fullmatch(path.name) and path.name not in known:
                report.leftovers.append(path)  # the stamp of a blob that is gone
        for snap in self.snapshots():
            if any((p.lstat().st_dev, p.lstat().st_ino) in bad_inodes for p in scandir(snap.path)):
                report.snapshots.append(snap.path)
        if repair:
            for sha256 in report.corrupt:
                self.discard(sha256)
            for path in (*report.leftovers, *report.snapshots):
                delete(path)
        return report
