"""The embedded default: blobs as files, written to a temporary file and
renamed into place so a reader never sees half a blob."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from peft_hub.errors import ChecksumMismatchError
from peft_hub.hub.storage.base import BlobStat, BlobStore


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


class BlobWriter:
    """Receives a blob chunk by chunk into a temporary file, hashing as it
    goes; :meth:`commit` renames it into place only if digest and size match."""

    def __init__(self, store: LocalBlobStore, sha256: str, size: int) -> None:
        self.store, self.sha256, self.size = store, sha256, size
        self.digest, self.written = hashlib.sha256(), 0
        fd, self.tmp = tempfile.mkstemp(dir=store.root / "tmp")
        self.fh = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.size:
            raise ChecksumMismatchError(f"blob {self.sha256} is larger than the declared {self.size} bytes")
        self.digest.update(chunk)
        self.fh.write(chunk)

    def commit(self) -> None:
        self.fh.close()
        if self.written != self.size or self.digest.hexdigest() != self.sha256:
            raise ChecksumMismatchError(
                f"blob {self.sha256}: received {self.written} bytes hashing to {self.digest.hexdigest()}"
            )
        target = self.store._path(self.sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(self.tmp, target)

    def abort(self) -> None:
        """Drop the temporary file if it was not committed (safe to call twice)."""
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

    def put(self, sha256: str, size: int, chunks: Iterator[bytes]) -> None:
        writer = BlobWriter(self, sha256, size)
        try:
            for chunk in chunks:
                writer.write(chunk)
            writer.commit()
        finally:
            writer.abort()

    def writer(self, sha256: str, size: int) -> BlobWriter:
        """A writer for a blob received in pieces (the hub's upload route)."""
        return BlobWriter(self, sha256, size)

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
        return BlobStat(sha256, st.st_size, modified, verified_sha256=sha256)

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def iterate(self) -> Iterator[BlobStat]:
        for path in (self.root / "sha256").glob("*/*"):
            stat = self.stat(path.name)
            if stat is not None:
                yield stat
