"""S3-compatible storage through boto3.

Clients upload straight to S3 with a presigned PUT that signs the blob's
sha256 as an ``x-amz-checksum-sha256`` header, so S3 itself rejects any other
bytes: a stored blob can only ever be rewritten with the same bytes. The PUT
also signs ``x-amz-meta-uploader``, the user it was issued to, which is how
the hub learns who proved possession (see ``hub.possession``). Every caller
who does not hold a blob gets such a URL whether or not the blob is stored,
so the answer tells nothing about other users' files.
Downloads are redirects to presigned GETs: bytes never pass through the hub.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO
from urllib.parse import quote

from peft_hub.errors import StorageError, StorageUnavailableError
from peft_hub.hub.cache import RecentItems
from peft_hub.hub.storage.base import BlobStat, BlobStore, BlobWriter, UploadTarget
from peft_hub.hub.storage.s3_multipart import S3Multipart

#: Presigned GET URLs by (endpoint, bucket, key, filename, expiry), with when they were signed.
_presigned = RecentItems(4096)

#: boto error codes -> what they mean to us.
_MISSING = {"404", "NoSuchKey", "NotFound"}
_CONFLICT = {"412", "PreconditionFailed"}


def content_disposition(filename: str) -> str:
    """``attachment`` with the name in RFC 6266 form, safe whatever it holds."""
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _b64(sha256: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256)).decode()


class GuardedClient:
    """A boto3 client whose failures say which store failed and how.

    A call S3 does not answer (refused, cut, timed out: after the client's
    bounded retries) or answers with a 5xx raises StorageUnavailableError
    (503), "storage (S3 at …) did not answer: …"; missing credentials and
    the like raise StorageError (502). S3's 4xx answers stay ClientErrors,
    for the callers that expect them (404, 412). Bodies of ``get_object``
    map their read errors the same way.
    """

    #: Methods that never touch the network.
    _LOCAL = frozenset({"generate_presigned_url", "generate_presigned_post", "get_paginator", "can_paginate"})

    def __init__(self, client: Any, where: str) -> None:
        self._client, self.where = client, where

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name in self._LOCAL or name.startswith("_") or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with self.guard():
                result = attr(*args, **kwargs)
            if isinstance(result, dict) and hasattr(result.get("Body"), "read"):
                result["Body"] = _GuardedBody(result["Body"], self)
            return result

        return call

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Map the failures of whatever runs inside (paginators, body reads)."""
        try:
            yield
        except Exception as exc:
            mapped = self.failure(exc)
            if mapped is None:
                raise
            raise mapped from exc

    def failure(self, exc: BaseException) -> StorageError | None:
        """The error of ours for a botocore failure; None for S3's 4xx answers and non-boto errors."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            IncompleteReadError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        if isinstance(exc, ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if status < 500:
                return None
            error = exc.response.get("Error", {})
            detail = ": ".join(str(v) for v in (error.get("Code"), error.get("Message")) if v)
            return StorageUnavailableError(f"storage ({self.where}) failed: HTTP {status} {detail}".rstrip())
        # Refused, reset, timed out, cut mid-answer (ResponseStreamingError is an HTTPClientError).
        if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):
            return StorageUnavailableError(f"storage ({self.where}) did not answer: {exc}")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError, NoRegionError)):
            return StorageError(f"storage ({self.where}) is not configured: {exc}")
        if isinstance(exc, BotoCoreError):
            return StorageError(f"storage ({self.where}) failed: {exc}")
        return None


class _GuardedBody:
    """A ``get_object`` body whose read failures are mapped like its call's."""

    def __init__(self, body: Any, client: GuardedClient) -> None:
        self._body, self._client = body, client

    def read(self, n: int | None = None) -> bytes:
        with self._client.guard():
            return self._body.read(n)

    def __iter__(self) -> Iterator[bytes]:
        with self._client.guard():
            yield from self._body

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _GuardedBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._body, name)


#: Multipart part size for blobs the hub receives itself; smaller ones are one PUT.
PART_BYTES = 16 * 1024 * 1024


class S3BlobWriter(BlobWriter):
    """Streams a blob into S3 as a multipart upload completed only when size
    and sha256 match, so wrong bytes never appear under the blob's key. A blob
    of at most one part is a single PUT that S3 checks against its sha256.
    ``If-None-Match: *`` keeps an existing blob from being replaced, so bytes
    for a blob S3 already holds (with its verified checksum) are only hashed:
    the upload then proves possession without storing a copy. An object under
    the name that nothing vouches for is hashed, and replaced when its bytes
    are not the blob's."""

    def __init__(self, store: S3BlobStore, sha256: str, size: int) -> None:
        super().__init__(sha256, size)
        self.store, self.client, self.bucket, self.key = store, store.client, store.bucket, store._key(sha256)
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        stat = store.stat(sha256)
        self.hash_only = stat is not None and stat.size == size and stat.verified_sha256 == sha256

    def _write(self, chunk: bytes) -> None:
        if self.hash_only:
            return
        self.buffer += chunk
        while len(self.buffer) >= PART_BYTES and self.written < self.size:
            self._send_part(bytes(self.buffer[:PART_BYTES]))
            del self.buffer[:PART_BYTES]

    def _send_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
        number = len(self.parts) + 1
        part = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                       PartNumber=number, Body=data)
        self.parts.append({"PartNumber": number, "ETag": part["ETag"]})

    def commit(self) -> None:
        self.verify()
        if self.hash_only:
            return
        for _ in range(2):
            if self._send() or self._existing_holds_these_bytes():
                return
        raise StorageUnavailableError(
            f"storage ({self.client.where}): an object of other bytes took the name of blob {self.sha256} "
            "again while it was stored; retry")

    def _send(self) -> bool:
        """Store the verified bytes under the blob's name unless an object is
        already there (S3's 412): False then."""
        from botocore.exceptions import ClientError

        try:
            if self.upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                       ChecksumSHA256=_b64(self.sha256), IfNoneMatch="*")
                return True
            if self.buffer:
                self._send_part(bytes(self.buffer))
                self.buffer.clear()
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                  MultipartUpload={"Parts": self.parts}, IfNoneMatch="*")
            self.upload_id = None
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in _CONFLICT:
                raise StorageError(f"storage ({self.client.where}) refused the upload: {exc}") from exc
            return False

    def _existing_holds_these_bytes(self) -> bool:
        """Whether the object that kept the name holds this blob's bytes:
        S3's own sha256 vouches for it, or it is hashed (an object completed
        in parts has only a composite checksum, and anyone may complete other
        bytes under a name). One that does not is deleted, so the next
        :meth:`_send` stores the bytes this writer verified: the name alone
        never vouches for what is stored under it."""
        stat = self.store.stat(self.sha256)
        if stat is None:  # deleted meanwhile: send again
            return False
        if stat.size == self.size and (
            stat.verified_sha256 == self.sha256 or self.store.stored_sha256(self.sha256) == self.sha256
        ):
            return True
        self.store.delete(self.sha256)
        return False

    def abort(self) -> None:
        if self.upload_id is not None:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None


class S3BlobStore(S3Multipart, BlobStore):
    """Blobs under ``s3://bucket/prefix/sha256/<hex>`` (direct uploads in parts: :mod:`.s3_multipart`)."""

    def __init__(
        self, bucket: str, prefix: str = "", client: Any = None, *, public_endpoint: str | None = None,
        endpoint_url: str | None = None, connect_timeout: float = 3.0, read_timeout: float = 10.0,
        max_attempts: int = 3, max_connections: int = 16,
    ) -> None:
        import boto3
        from botocore.config import Config

        # Every call is bounded: a stalled S3 costs at most about
        # max_attempts * (connect or read timeout), never a hung thread.
        config = Config(
            signature_version="s3v4", connect_timeout=connect_timeout, read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": max_attempts}, max_pool_connections=max_connections,
        )
        if client is None:
            client = boto3.client("s3", config=config, endpoint_url=endpoint_url)
        self.where = f"S3 at {client.meta.endpoint_url}"
        self.client, self.bucket = GuardedClient(client, self.where), bucket
        # Presigned URLs are signed for the address clients use.
        self.presigner = boto3.client("s3", config=config, endpoint_url=public_endpoint) if public_endpoint else client
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in _MISSING:
                raise StorageError(f"storage ({self.where}) cannot use bucket {self.bucket!r}: {exc}") from exc
            try:
                self.client.create_bucket(Bucket=self.bucket)
            except ClientError as race:  # another replica starting at the same time created it first
                if race.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                    raise StorageError(f"cannot create bucket {self.bucket!r}: {race}") from race

    def _key(self, sha256: str) -> str:
        return f"{self.prefix}sha256/{sha256}"

    def writer(self, sha256: str, size: int) -> S3BlobWriter:
        return S3BlobWriter(self, sha256, size)

    def open(self, sha256: str, start: int = 0, end: int | None = None) -> BinaryIO:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(sha256)}
        if start or end is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        return self.client.get_object(**kwargs)["Body"]

    def stat(self, sha256: str) -> BlobStat | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(sha256), ChecksumMode="ENABLED")
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                return None
            raise StorageError(f"storage ({self.where}) refused: {exc}") from exc
        verified = head.get("ChecksumSHA256")
        verified_hex = base64.b64decode(verified).hex() if verified and "-" not in verified else None
        modified = head["LastModified"]
        uploader = (head.get("Metadata") or {}).get("uploader")
        return BlobStat(sha256, head["ContentLength"], modified, verified_sha256=verified_hex, uploader=uploader)

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def iterate(self, start_after: str | None = None) -> Iterator[BlobStat]:
        paginator = self.client.get_paginator("list_objects_v2")
        # S3 lists keys in UTF-8 byte order: under one prefix, that is sha256 order.
        after = {"StartAfter": self._key(start_after)} if start_after else {}
        with self.client.guard():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}sha256/", **after):
                for obj in page.get("Contents", []):
                    sha = obj["Key"].rsplit("/", 1)[-1]
                    yield BlobStat(sha, obj["Size"], obj["LastModified"])

    def sweep_stale(self, max_age: float) -> int:
        """Abort the multipart uploads under this prefix that started more than
        ``max_age`` seconds ago: what a hub killed mid-upload leaves. S3 cannot
        tell whether another hub still feeds one, so only age decides."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=max_age)
        paginator = self.client.get_paginator("list_multipart_uploads")
        aborted = 0
        with self.client.guard():
            for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}sha256/"):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < cutoff:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                           UploadId=upload["UploadId"])
                        aborted += 1
        return aborted

    def presign_get(self, sha256: str, filename: str, expires: int) -> str | None:
        """A presigned GET, reused while more than half its validity remains
        (signing costs more than the rest of a resolve); it names only the
        blob and the file name, never who asked."""
        found = self.reused_get(sha256, filename, expires)
        if found is not None:
            return found
        key, now = self._presign_key(sha256, filename, expires), time.monotonic()
        url = self.presigner.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket, "Key": self._key(sha256),
                "ResponseContentDisposition": content_disposition(filename),
            },
            ExpiresIn=expires,
        )
        _presigned.put(key, (url, now))
        return url

    def reused_get(self, sha256: str, filename: str, expires: int) -> str | None:
        """The URL :meth:`presign_get` would reuse, or None when it would sign
        (which may fetch credentials): a lookup quick enough for the event loop."""
        found = _presigned.get(self._presign_key(sha256, filename, expires))
        if found is not None and time.monotonic() - found[1] < expires / 2:
            return found[0]
        return None

    def _presign_key(self, sha256: str, filename: str, expires: int) -> tuple[Any, ...]:
        return (self.presigner.meta.endpoint_url, self.bucket, self._key(sha256), filename, expires)

    def upload_target(self, sha256: str, size: int, expires: int, uploader: str) -> UploadTarget | None:
        checksum = _b64(sha256)
        url = self.presigner.generate_presigned_url(
            "put_object",
            Params={
                "Bucket": self.bucket, "Key": self._key(sha256), "ContentLength": size,
                "ChecksumSHA256": checksum, "Metadata": {"uploader": uploader},
            },
            ExpiresIn=expires,
        )
        headers = {"x-amz-checksum-sha256": checksum, "x-amz-meta-uploader": uploader}
        return UploadTarget(url, "PUT", headers)
