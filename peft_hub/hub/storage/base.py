"""The blob store interface. Blobs are content-addressed by sha256 and never
change once written; metadata lives in the database, not here."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO


@dataclass(frozen=True)
class BlobStat:
    """What the store knows about one blob."""

    sha256: str
    size: int
    modified: datetime
    #: The store's own verified sha256, when it keeps one (S3 checksums).
    verified_sha256: str | None = None


@dataclass(frozen=True)
class UploadTarget:
    """Where a client sends a blob's bytes: a URL, a method and headers."""

    url: str
    method: str = "PUT"
    headers: dict[str, str] | None = None


class BlobStore(abc.ABC):
    """Six operations over sha256-named blobs."""

    @abc.abstractmethod
    def put(self, sha256: str, size: int, chunks: Iterator[bytes]) -> None:
        """Store bytes under ``sha256``, verifying digest and size first.

        Raises:
            ChecksumMismatchError: the bytes do not hash to ``sha256``.
        """

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
    def iterate(self) -> Iterator[BlobStat]:
        """Every blob in the store."""

    def presign_get(self, sha256: str, filename: str, expires: int) -> str | None:
        """A URL that serves the blob without the hub, or None to stream it."""
        return None

    def upload_target(self, sha256: str, size: int, expires: int) -> UploadTarget | None:
        """A direct upload URL, or None when the hub receives the bytes itself."""
        return None
