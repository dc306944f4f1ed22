"""S3 multipart uploads straight from clients, with presigned part URLs.

The hub creates the upload (signing ``x-amz-meta-uploader`` into it, so the
finished object records who sent it, as a presigned PUT does) and hands out
one presigned ``UploadPart`` URL per part. When the client declared each
part's sha256, the upload is created with ``ChecksumAlgorithm=SHA256`` and
each URL signs its part's ``x-amz-checksum-sha256``: S3 refuses any other
bytes for that part (measured on SeaweedFS ``weed mini``: a wrong part gets
400 BadDigest). The finished object only has S3's composite checksum
(``…-N``), which says nothing about the whole sha256, so the hub hashes the
blob once before it is published (``publish.verify_outside``).

Completion uses ``If-None-Match: *``: bytes the hub has not hashed never
replace a stored blob. SeaweedFS answers 412 there and keeps the upload.
"""

from __future__ import annotations

import base64
from typing import Any

from peft_hub.hub.storage.base import MultipartStore, PartInfo, UploadTarget

_NO_UPLOAD = {"NoSuchUpload", "404", "NotFound"}


def b64(sha256: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256)).decode()


class S3Multipart(MultipartStore):
    """Multipart operations for :class:`~peft_hub.hub.storage.s3.S3BlobStore`
    (which provides ``client``, ``presigner``, ``bucket`` and ``_key``)."""

    client: Any
    presigner: Any
    bucket: str

    def _key(self, sha256: str) -> str:  # pragma: no cover - provided by the store
        raise NotImplementedError

    def multipart_create(self, sha256: str, uploader: str, *, checksums: bool) -> str:
        extra = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
        answer = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=self._key(sha256), Metadata={"uploader": uploader}, **extra)
        return str(answer["UploadId"])

    def multipart_part_url(self, sha256: str, upload_id: str, number: int, size: int, part_sha256: str | None,
                           expires: int) -> UploadTarget:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(sha256), "UploadId": upload_id,
                                  "PartNumber": number, "ContentLength": size}
        headers: dict[str, str] = {}
        if part_sha256 is not None:
            params["ChecksumSHA256"] = headers["x-amz-checksum-sha256"] = b64(part_sha256)
        url = self.presigner.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires)
        return UploadTarget(url, "PUT", headers)

    def multipart_parts(self, sha256: str, upload_id: str) -> list[PartInfo] | None:
        from botocore.exceptions import ClientError

        parts: list[PartInfo] = []
        paginator = self.client.get_paginator("list_parts")
        try:
            with self.client.guard():
                for page in paginator.paginate(Bucket=self.bucket, Key=self._key(sha256), UploadId=upload_id):
                    parts += [PartInfo(p["PartNumber"], p["Size"], p["ETag"]) for p in page.get("Parts", [])]
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _NO_UPLOAD:
                return None
            raise
        return sorted(parts, key=lambda p: p.number)

    def multipart_complete(self, sha256: str, upload_id: str, parts: list[PartInfo],
                           part_sha256s: list[str] | None) -> bool:
        from botocore.exceptions import ClientError

        listed = []
        for part in parts:
            item: dict[str, Any] = {"PartNumber": part.number, "ETag": part.etag}
            if part_sha256s is not None:
                item["ChecksumSHA256"] = b64(part_sha256s[part.number - 1])
            listed.append(item)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self._key(sha256), UploadId=upload_id,
                MultipartUpload={"Parts": listed}, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in ("412", "PreconditionFailed"):
                raise
            self.multipart_abort(sha256, upload_id)
            return False
        return True

    def multipart_abort(self, sha256: str, upload_id: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(sha256), UploadId=upload_id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in _NO_UPLOAD:
                raise
