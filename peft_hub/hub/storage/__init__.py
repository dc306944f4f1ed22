"""Pick a blob store from a storage URI: a path or ``file://`` is local,
``s3://bucket/prefix`` is S3 (endpoint and credentials come from boto3's
usual settings, such as ``AWS_ENDPOINT_URL``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from peft_hub.errors import InvalidInputError
from peft_hub.hub.storage.base import BlobStat, BlobStore, MultipartStore, PartInfo, UploadTarget


def open_store(uri: str, *, s3_public_url: str | None = None, **s3_options: Any) -> BlobStore:
    """Build the blob store named by ``uri``.

    Args:
        uri: a directory, ``file://…`` or ``s3://bucket/prefix``.
        s3_public_url: the S3 endpoint clients reach, if not the hub's own.
        s3_options: endpoint and timeouts for :class:`~peft_hub.hub.storage.s3.S3BlobStore`.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and uri[1:3] == ":\\"):
        from peft_hub.hub.storage.local import LocalBlobStore

        return LocalBlobStore(parsed.path if parsed.scheme == "file" else uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidInputError(f"storage URI {uri!r} names no bucket")
        from peft_hub.hub.storage.s3 import S3BlobStore

        return S3BlobStore(parsed.netloc, parsed.path, public_endpoint=s3_public_url, **s3_options)
    raise InvalidInputError(f"unknown storage scheme {parsed.scheme!r}: use a directory or s3://bucket/prefix")


__all__ = ["BlobStat", "BlobStore", "MultipartStore", "PartInfo", "UploadTarget", "open_store"]
