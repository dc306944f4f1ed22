"""Getting bytes that an HF client sends into the blob store.

The HF client's LFS basic transfer is one bare ``PUT`` of the file to the
``href`` the batch endpoint gave it: no headers and no ``Authorization``. The
store's presigned S3 PUT cannot serve as that href, because it signs the
``x-amz-checksum-sha256`` and ``If-None-Match`` headers that this PUT never
sends (S3 answers SignatureDoesNotMatch). So the href is a URL on the hub,
signed with an HMAC that names the blob, its size and an expiry, and the hub
streams the body into the store, checking size and sha256 before the blob
becomes visible.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from peft_hub.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    InvalidInputError,
)
from peft_hub.hub.config import Settings
from peft_hub.hub.storage import BlobStore

#: Bytes handed to a writer at a time (they are written from a worker thread).
FEED_BYTES = 1024 * 1024
#: S3 multipart part size for streamed uploads; smaller blobs go in one PUT.
PART_BYTES = 16 * 1024 * 1024

_key_lock = threading.Lock()


class BlobSink(Protocol):
    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class S3StreamWriter:
    """Streams a blob into an S3 multipart upload, completing it only when the
    bytes have the declared size and sha256, so a wrong upload never appears
    under its key. Blobs up to one part go through ``store.put`` instead, which
    also has S3 check the sha256 and refuses to replace an existing blob."""

    def __init__(self, store: Any, sha256: str, size: int) -> None:
        self.store, self.sha256, self.size = store, sha256, size
        self.client, self.bucket, self.key = store.client, store.bucket, store._key(sha256)
        self.digest, self.written = hashlib.sha256(), 0
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.size:
            raise ChecksumMismatchError(f"blob {self.sha256} is larger than the declared {self.size} bytes")
        self.digest.update(chunk)
        self.buffer += chunk
        while len(self.buffer) >= PART_BYTES and self.written < self.size:
            self._send_part(bytes(self.buffer[:PART_BYTES]))
            del self.buffer[:PART_BYTES]

    def _send_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        part = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=data)
        self.parts.append({"PartNumber": number, "ETag": part["ETag"]})

    def commit(self) -> None:
        if self.written != self.size or self.digest.hexdigest() != self.sha256:
            raise ChecksumMismatchError(
                f"blob {self.sha256}: received {self.written} bytes hashing to {self.digest.hexdigest()}"
            )
        if self.upload_id is None:
            self.store.put(self.sha256, self.size, iter([bytes(self.buffer)]))
            return
        if self.buffer:
            self._send_part(bytes(self.buffer))
        from botocore.exceptions import ClientError

        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts}, IfNoneMatch="*",
            )
        except ClientError as exc:  # already stored: the same bytes, by construction
            if exc.response["Error"]["Code"] not in ("412", "PreconditionFailed"):
                raise
            self.abort()
        self.upload_id = None

    def abort(self) -> None:
        if self.upload_id is not None:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None


def open_sink(store: BlobStore, sha256: str, size: int) -> BlobSink:
    """A writer for ``store``: the local store's own, or a streaming S3 one."""
    writer = getattr(store, "writer", None)
    if writer is not None:
        return writer(sha256, size)
    if hasattr(store, "client") and hasattr(store, "_key"):
        return S3StreamWriter(store, sha256, size)
    raise InvalidInputError("this hub's blob store cannot take streamed uploads")


async def receive(store: BlobStore, sha256: str, size: int, chunks: AsyncIterator[bytes]) -> None:
    """Write a request body into the store, verified; nothing is kept on failure."""
    sink = await run_in_threadpool(open_sink, store, sha256, size)
    try:
        pending = bytearray()
        async for chunk in chunks:
            pending += chunk
            if len(pending) >= FEED_BYTES:
                await run_in_threadpool(sink.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(sink.write, bytes(pending))
        await run_in_threadpool(sink.commit)
    finally:
        await run_in_threadpool(sink.abort)


def put_small(store: BlobStore, sha256: str, data: bytes) -> None:
    """Store a small blob received whole, unless it is already there."""
    stat = store.stat(sha256)
    if stat is not None and stat.size == len(data):
        return
    store.put(sha256, len(data), iter([data]))


# --- signed upload URLs -------------------------------------------------------


def signing_key(app_state: Any, settings: Settings) -> bytes:
    """The HMAC key for upload URLs: the session secret, else one per process.

    A hub run as several processes must set ``PEFT_HUB_SESSION_SECRET`` so that
    any process accepts a URL another one signed.
    """
    if settings.session_secret:
        return hashlib.sha256(b"peft-hub hf lfs upload\x00" + settings.session_secret.encode()).digest()
    with _key_lock:
        key = getattr(app_state, "hf_upload_key", None)
        if key is None:
            key = app_state.hf_upload_key = secrets.token_bytes(32)
    return key


def sign(key: bytes, sha256: str, size: int, expires: int) -> str:
    return hmac.new(key, f"{sha256}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


def check_signature(key: bytes, sha256: str, size: int, expires: int, signature: str) -> None:
    """Accept only an unexpired URL this hub signed for exactly this blob."""
    if expires < time.time():
        raise AuthenticationError("this upload URL has expired; ask the LFS batch endpoint for a new one")
    if not hmac.compare_digest(sign(key, sha256, size, expires), signature):
        raise AuthenticationError("this upload URL is not valid for this blob")
