"""The embedded default: blobs as files, written to a temporary file and
renamed into place so a reader never sees half a blob.

A writer holds an exclusive ``flock`` on its temporary file until the file is
renamed or removed, so the leftovers of a writer that died (a hub killed
mid-upload) are told apart from live uploads, whichever hub process on the
host (or NFS client) runs them: :meth:`LocalBlobStore.sweep_stale` removes
only files nobody holds.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from peft_hub.hub.storage.base import BlobStat, BlobStore, BlobWriter

try:
    import fcntl
except ImportError:  # Windows: no flock; stale files are then told by age only
    fcntl = None  # type: ignore[assignment]

#: A temporary file younger than this is never swept: its writer may not
#: have locked it yet (the lock follows its creation at once).
TMP_MIN_AGE = 10.0


class _RangeReader:
    """A file object limited to ``[start, end)``."""

    def __init__(self, fh: BinaryIO, start: int, end: int | None) -> None:
        fh.seek(start)
        self._fh, self._left = fh, (None if end is None else end - start)

    def read(self, n: int = -1) -> bytes:
        if self._left is not None:
            n = self._left if n < 0 else min(n, self._left)
            self._left -= n
        return self._fh.read(n)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBlobWriter(BlobWriter):
    """Writes into a temporary file; :meth:`commit` renames it into place."""

    def __init__(self, store: LocalBlobStore, sha256: str, size: int) -> None:
        super().__init__(sha256, size)
        self.target, self._live = store._path(sha256), store._live
        fd, self.tmp = tempfile.mkstemp(dir=store.root / "tmp")
        self._live.add(self.tmp)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held until the file is renamed or removed
        self.fh = os.fdopen(fd, "wb")

    def _write(self, chunk: bytes) -> None:
        self.fh.write(chunk)

    def commit(self) -> None:
        self.fh.flush()
        if fcntl is None:  # an open file cannot be renamed there
            self.fh.close()
        self.verify()
        self.target.parent.mkdir(exist_ok=True)
        os.replace(self.tmp, self.target)  # still locked: no sweep removes it first
        self.fh.close()
        self._live.discard(self.tmp)

    def abort(self) -> None:
        Path(self.tmp).unlink(missing_ok=True)
        self.fh.close()
        self._live.discard(self.tmp)


class LocalBlobStore(BlobStore):
    """Blobs under ``root/sha256/ab/abcdef…``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        self.where = f"local directory {self.root}"
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        #: This process's writers' temporary files: never opened by a sweep,
        #: since closing any descriptor drops a process's POSIX locks (NFS).
        self._live: set[str] = set()

    def sweep_stale(self, max_age: float) -> int:
        """Remove temporary files that no live writer holds: what a hub killed
        mid-upload leaves. Safe with several hub processes on one directory:
        a file whose lock another process holds is skipped. Where the file
        system has no locks, files older than ``max_age`` seconds go instead.
        Returns how many files were removed."""
        removed, now = 0, time.time()
        for path in (self.root / "tmp").iterdir():
            if str(path) in self._live:
                continue
            try:
                age = now - path.stat().st_mtime
                if age < TMP_MIN_AGE or (fcntl is None and age < max_age):
                    continue
                removed += _remove_unlocked(path)
            except OSError:  # its writer finished meanwhile, or not ours to remove
                continue
        return removed

    def _path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def writer(self, sha256: str, size: int) -> LocalBlobWriter:
        return LocalBlobWriter(self, sha256, size)

    def open(self, sha256: str, start: int = 0, end: int | None = None) -> BinaryIO:
        return _RangeReader(open(self._path(sha256), "rb"), start, end)  # type: ignore[return-value]

    def local_path(self, sha256: str) -> Path:
        """The file itself, for the service to stream with sendfile."""
        return self._path(sha256)

    def stat(self, sha256: str) -> BlobStat | None:
        try:
            st = self._path(sha256).stat()
        except FileNotFoundError:
            return None
        modified = datetime.fromtimestamp(st.st_mtime, timezone.utc)
        return BlobStat(sha256, st.st_size, modified)  # files keep no checksum: see hub.ledger

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def iterate(self, start_after: str | None = None) -> Iterator[BlobStat]:
        after = start_after or ""
        for folder in sorted(p for p in (self.root / "sha256").iterdir() if p.name >= after[:2]):
            for path in sorted(p for p in folder.iterdir() if p.name > after):
                stat = self.stat(path.name)
                if stat is not None:
                    yield stat


def _remove_unlocked(path: Path) -> int:
    """Remove ``path`` unless a writer holds its lock; 1 if it was removed."""
    if fcntl is None:
        path.unlink(missing_ok=True)
        return 1
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a live writer, in another process
        path.unlink(missing_ok=True)  # under the lock: no writer can be using it
        return 1
    finally:
        os.close(fd)
