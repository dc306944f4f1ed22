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
from urllib.parse import quote
from collections.abc import Iterator
from typing import Any, BinaryIO

from peft_hub.errors import StorageError
from peft_hub.hub.storage.base import BlobStat, BlobStore, BlobWriter, UploadTarget

#: boto error codes -> what they mean to us.
_MISSING = {"404", "NoSuchKey", "NotFound"}
_CONFLICT = {"412", "PreconditionFailed"}


def content_disposition(filename: str) -> str:
    """``attachment`` with the name in RFC 6266 form, safe whatever it holds."""
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _b64(sha256: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256)).decode()


#: Multipart part size for blobs the hub receives itself; smaller ones are one PUT.
PART_BYTES = 16 * 1024 * 1024


class S3BlobWriter(BlobWriter):
    """Streams a blob into S3 as a multipart upload completed only when size
    and sha256 match, so wrong bytes never appear under the blob's key. A blob
    of at most one part is a single PUT that S3 checks against its sha256.
    ``If-None-Match: *`` keeps an existing blob from ever being replaced, so
    bytes for a blob S3 already holds (with its verified checksum) are only
    hashed: the upload then proves possession without storing a copy."""

    def __init__(self, store: S3BlobStore, sha256: str, size: int) -> None:
        super().__init__(sha256, size)
        self.client, self.bucket, self.key = store.client, store.bucket, store._key(sha256)
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
        from botocore.exceptions import ClientError

        self.verify()
        if self.hash_only:
            return
        try:
            if self.upload_id is None:
                self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                       ChecksumSHA256=_b64(self.sha256), IfNoneMatch="*")
                return
            if self.buffer:
                self._send_part(bytes(self.buffer))
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                                  MultipartUpload={"Parts": self.parts}, IfNoneMatch="*")
            self.upload_id = None
        except ClientError as exc:
            # 412: the blob is already stored, and by its name it holds these bytes.
            if exc.response["Error"]["Code"] not in _CONFLICT:
                raise StorageError(str(exc)) from exc

    def abort(self) -> None:
        if self.upload_id is not None:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            self.upload_id = None


class S3BlobStore(BlobStore):
    """Blobs under ``s3://bucket/prefix/sha256/<hex>``."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None, *, public_endpoint: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        config = Config(signature_version="s3v4", retries={"mode": "standard"})
        if client is None:
            client = boto3.client("s3", config=config)
        self.client, self.bucket = client, bucket
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
                raise StorageError(f"cannot use bucket {self.bucket!r}: {exc}") from exc
            self.client.create_bucket(Bucket=self.bucket)

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
            raise StorageError(str(exc)) from exc
        verified = head.get("ChecksumSHA256")
        verified_hex = base64.b64decode(verified).hex() if verified and "-" not in verified else None
        modified = head["LastModified"]
        uploader = (head.get("Metadata") or {}).get("uploader")
        return BlobStat(sha256, head["ContentLength"], modified, verified_sha256=verified_hex, uploader=uploader)

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))

    def iterate(self) -> Iterator[BlobStat]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}sha256/"):
            for obj in page.get("Contents", []):
                sha = obj["Key"].rsplit("/", 1)[-1]
                yield BlobStat(sha, obj["Size"], obj["LastModified"])

    def presign_get(self, sha256: str, filename: str, expires: int) -> str | None:
        return self.presigner.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket, "Key": self._key(sha256),
                "ResponseContentDisposition": content_disposition(filename),
            },
            ExpiresIn=expires,
        )

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
