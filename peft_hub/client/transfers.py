"""Moving bytes: uploads to the hub or to presigned S3 URLs, and downloads
into the cache with sha256 verification, both with progress bars."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from peft_hub.client.cache import BlobCache
from peft_hub.client.http import raise_for_status
from peft_hub.errors import ChecksumMismatchError, HubUnreachableError
from peft_hub.progress import tqdm

CHUNK = 1024 * 1024


def _file_chunks(path: Path, bar: tqdm) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            bar.update(len(block))
            yield block


def upload(session: httpx.Client, target: dict[str, Any], path: Path, size: int, bar: tqdm) -> None:
    """PUT one file to the URL the hub handed out (its own, or presigned S3)."""
    headers = {"Content-Length": str(size), **target.get("headers", {})}
    try:
        if target.get("auth"):
            response = session.request(target["method"], target["url"], content=_file_chunks(path, bar), headers=headers)
        else:  # a presigned URL: our token must not travel to the object store
            with httpx.Client(timeout=session.timeout) as bare:
                response = bare.request(target["method"], target["url"], content=_file_chunks(path, bar), headers=headers)
    except httpx.TransportError as exc:
        raise HubUnreachableError(f"upload of {path.name} failed: {exc}") from exc
    if response.status_code == 412:  # If-None-Match: someone stored the same blob first
        return
    raise_for_status(response)


def download(session: httpx.Client, url: str, sha256: str, size: int, cache: BlobCache, bar: tqdm) -> Path:
    """Fetch a file into the cache, verify it, and return its cached path."""
    tmp = cache.incomplete_path(sha256)
    digest, received = hashlib.sha256(), 0
    try:
        with session.stream("GET", url, follow_redirects=True) as response:
            raise_for_status(response)
            with open(tmp, "wb") as fh:
                for block in response.iter_bytes(CHUNK):
                    digest.update(block)
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
        if received != size or digest.hexdigest() != sha256:
            raise ChecksumMismatchError(
                f"downloaded {received} bytes hashing to {digest.hexdigest()}, expected {size} bytes with sha256 {sha256}"
            )
        final = cache.blob_path(sha256)
        os.replace(tmp, final)
        return final
    except httpx.TransportError as exc:
        raise HubUnreachableError(f"download failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
