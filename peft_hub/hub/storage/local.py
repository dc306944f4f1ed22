"""The embedded default: blobs as files, written to a temporary file and
renamed into place so a reader never sees half a blob."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from peft_hub.hub.storage.base import BlobStat, BlobStore, BlobWriter


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
        self.target = store._path(sha256)
        fd, self.tmp = tempfile.mkstemp(dir=store.root / "tmp")
        self.fh = os.fdopen(fd, "wb")

    def _write(self, chunk: bytes) -> None:
        self.fh.write(chunk)

    def commit(self) -> None:
        self.fh.close()
        self.verify()
        self.target.parent.mkdir(exist_ok=True)
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        self.fh.close()
        Path(self.tmp).unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    """Blobs under ``root/sha256/ab/abcdef…``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

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

    def iterate(self) -> Iterator[BlobStat]:
        for path in (self.root / "sha256").glob("*/*"):
            stat = self.stat(path.name)
            if stat is not None:
                yield stat
