"""The blob store interface. Blobs are content-addressed by sha256 and never
change once written; metadata lives in the database, not here."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from peft_hub.errors import ChecksumMismatchError


@dataclass(frozen=True)
class BlobStat:
    """What the store knows about one blob."""

    sha256: str
    size: int
    modified: datetime
    #: The store's own verified sha256, when it keeps one (S3 checksums).
    verified_sha256: str | None = None
    #: The user id a direct (presigned) upload was signed for, where the store records it.
    uploader: str | None = None


@dataclass(frozen=True)
class UploadTarget:
    """Where a client sends a blob's bytes: a URL, a method and headers."""

    url: str
    method: str = "PUT"
    headers: dict[str, str] | None = None


class BlobWriter(abc.ABC):
    """Receives one blob in pieces. Nothing is visible under its name until
    :meth:`commit` has checked the size and sha256; :meth:`abort` drops what
    was received (and is safe to call after commit)."""

    def __init__(self, sha256: str, size: int) -> None:
        self.sha256, self.size = sha256, size
        self.digest, self.written = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.size:
            raise ChecksumMismatchError(f"blob {self.sha256} is larger than the declared {self.size} bytes")
        self.digest.update(chunk)
        self._write(chunk)

    def verify(self) -> None:
        """Raise unless exactly the declared bytes were received."""
        if self.written != self.size or self.digest.hexdigest() != self.sha256:
            raise ChecksumMismatchError(
                f"blob {self.sha256}: received {self.written} bytes hashing to {self.digest.hexdigest()}"
            )

    @abc.abstractmethod
    def _write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


class BlobStore(abc.ABC):
    """Six operations over sha256-named blobs (plus presigned URLs where the
    store has them)."""

    #: What the store is, for messages: "storage (<where>) did not answer: …".
    where: str = "blob store"

    @abc.abstractmethod
    def writer(self, sha256: str, size: int) -> BlobWriter:
        """A writer that stores a blob under ``sha256`` once it is verified."""

    def put(self, sha256: str, size: int, chunks: Iterable[bytes]) -> None:
        """Store bytes under ``sha256``, verifying digest and size first.

        Raises:
            ChecksumMismatchError: the bytes do not hash to ``sha256``.
        """
        writer = self.writer(sha256, size)
        try:
            for chunk in chunks:
                writer.write(chunk)
            writer.commit()
        finally:
            writer.abort()

    def stored_sha256(self, sha256: str) -> str:
        """The sha256 of the bytes stored under ``sha256``, read streaming."""
        digest = hashlib.sha256()
        with self.open(sha256) as fh:
            while block := fh.read(8 * 1024 * 1024):
                digest.update(block)
        return digest.hexdigest()

    @abc.abstractmethod
    def open(self, sha256: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """Open a blob (or the byte range ``[start, end)``) for reading."""

    @abc.abstractmethod
    def stat(self, sha256: str) -> BlobStat | None:
        """The blob's size and age, or None when it is absent."""

    @abc.abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob; absent blobs are ignored."""

    @abc.abstractmethod
    def iterate(self, start_after: str | None = None) -> Iterator[BlobStat]:
        """Every blob in the store, in sha256 order, from the first after
        ``start_after`` on (so a long listing can stop and resume there)."""

    def local_path(self, sha256: str) -> Path | None:
        """A file on this machine holding the blob, for the hub to send with
        sendfile (Range and HEAD included); None when the store keeps none."""
        return None

    def presign_get(self, sha256: str, filename: str, expires: int) -> str | None:
        """A URL that serves the blob without the hub, or None to stream it."""
        return None

    def sweep_stale(self, max_age: float) -> int:
        """Remove what uploads that died left behind (temporary files,
        unfinished multipart uploads); return how many were removed."""
        return 0

    def upload_target(self, sha256: str, size: int, expires: int, uploader: str) -> UploadTarget | None:
        """A direct upload URL that records ``uploader`` with the blob, or None
        when the hub receives the bytes itself."""
        return None


@dataclass(frozen=True)
class PartInfo:
    """One uploaded part of a multipart upload, as the store lists it."""

    number: int
    size: int
    etag: str


class MultipartStore(abc.ABC):
    """Direct uploads in parts (S3 multipart with presigned part URLs). A store
    that has them is also a :class:`BlobStore`; the hub checks with isinstance."""

    @abc.abstractmethod
    def multipart_create(self, sha256: str, uploader: str, *, checksums: bool) -> str:
        """Start a multipart upload of ``sha256`` recording ``uploader``; its id."""

    @abc.abstractmethod
    def multipart_part_url(self, sha256: str, upload_id: str, number: int, size: int, part_sha256: str | None,
                           expires: int) -> UploadTarget:
        """A presigned PUT for one part, signed with its sha256 when given."""

    @abc.abstractmethod
    def multipart_parts(self, sha256: str, upload_id: str) -> list[PartInfo] | None:
        """The parts uploaded so far, by number; None when there is no such upload."""

    @abc.abstractmethod
    def multipart_complete(self, sha256: str, upload_id: str, parts: list[PartInfo],
                           part_sha256s: list[str] | None) -> bool:
        """Join the parts under the blob's name unless a blob is already stored
        there; False (and the upload aborted) in that case."""

    @abc.abstractmethod
    def multipart_abort(self, sha256: str, upload_id: str) -> None:
        """Drop an unfinished upload; an unknown one is ignored."""
