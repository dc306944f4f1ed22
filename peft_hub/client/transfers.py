"""Moving bytes: uploads to the hub or to presigned S3 URLs, and downloads
into the cache with sha256 verification, both with progress bars.

The hub's answers decide what moves where, so they are checked before any
byte moves: file names, digests, sizes and revision ids must be exactly what
the registry itself would store, an upload may only send a file this push
holds, and the token travels only to the hub's own origin (scheme, host and
port), whatever a preupload answer or a redirect says.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from peft_hub.adapter import MAX_FILES, FileEntry, size_cap, validate_filename
from peft_hub.client.cache import BlobCache, check_name, check_revision, check_sha256
from peft_hub.client.http import origin, raise_for_status, redact
from peft_hub.errors import (
    ChecksumMismatchError, HubUnreachableError, InvalidAdapterError, InvalidInputError, StorageError,
)
from peft_hub.progress import tqdm

CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
#: Headers a preupload answer may not set: credentials, and framing we decide ourselves.
_RESERVED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "host", "content-length", "transfer-encoding", "connection",
})


@dataclass(frozen=True)
class RemoteFile:
    """One file of a revision as the hub lists it, after checking."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class UploadTarget:
    """Where one blob goes, after checking the hub's preupload answer."""

    url: httpx.URL
    method: str
    headers: dict[str, str]
    entry: FileEntry


# --- checking what the hub says ----------------------------------------------


def remote_manifest(detail: Any) -> tuple[str, list[RemoteFile]]:
    """The revision id and files of a revision detail, refused unless every
    value is safe to use in a path: nothing is written before this passes.

    Raises:
        InvalidAdapterError: (or UnsafeFormatError) naming the first bad value.
    """
    try:
        if not isinstance(detail, dict) or not isinstance(detail.get("files"), list):
            raise InvalidAdapterError("the answer is not a revision with a list of files")
        revision, files = check_revision(detail.get("revision")), detail["files"]
        if len(files) > MAX_FILES:
            raise InvalidAdapterError(f"it lists {len(files)} files, and an adapter has at most {MAX_FILES}")
        out: list[RemoteFile] = []
        seen: set[str] = set()
        for item in files:
            if not isinstance(item, dict):
                raise InvalidAdapterError(f"a file entry is not an object: {item!r:.80}")
            name = _remote_name(item.get("path"))
            key = unicodedata.normalize("NFC", name).casefold()  # one file on a case-insensitive disk
            if key in seen:
                raise InvalidAdapterError(f"file {name!r} is listed twice")
            seen.add(key)
            size = item.get("size")
            if type(size) is not int or not 0 <= size <= size_cap(name):
                raise InvalidAdapterError(f"{name}: size {size!r:.40} is not an integer from 0 to {size_cap(name)}")
            out.append(RemoteFile(name, check_sha256(item.get("sha256"), f"{name}: sha256"), size))
    except InvalidAdapterError as exc:
        raise type(exc)(f"refusing the hub's file list, nothing was written: {exc}") from None
    return revision, out


def _remote_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidAdapterError(f"file name {name!r:.80} is not a string")
    return check_name(validate_filename(name))


def upload_plan(session: httpx.Client, plan: Any, entries: list[FileEntry]) -> list[UploadTarget]:
    """The uploads a preupload answer asks for, each tied to a file of this push.

    The local file is picked by its sha256 from ``entries``, never by a path
    the hub sent, so a hub cannot make the client read any other file.
    """
    ours = {e.sha256: e for e in entries}
    if not isinstance(plan, dict) or not isinstance(plan.get("uploads"), list):
        raise InvalidInputError("the hub's preupload answer has no list of uploads")
    targets: dict[str, UploadTarget] = {}
    for item in plan["uploads"]:
        if not isinstance(item, dict):
            raise InvalidInputError(f"the hub's preupload answer holds {item!r:.80}, not an upload")
        sha256 = item.get("sha256")
        entry = ours.get(sha256) if isinstance(sha256, str) else None
        if entry is None:
            raise InvalidInputError(f"the hub asked for blob {item.get('sha256')!r:.80}, which this push does not hold")
        method = item.get("method", "PUT")
        if method not in ("PUT", "POST"):
            raise InvalidInputError(f"the hub asked for an upload with method {method!r:.20}")
        headers = item.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise InvalidInputError("the hub's upload headers are not a mapping of strings")
        headers = {k: v for k, v in headers.items() if k.lower() not in _RESERVED_HEADERS}
        targets.setdefault(entry.sha256, UploadTarget(absolute_url(session, item.get("url")), method, headers, entry))
    return list(targets.values())


def absolute_url(session: httpx.Client, url: Any, base: httpx.URL | None = None) -> httpx.URL:
    """``url`` resolved against ``base`` (default: the hub), refused unless plain http(s)."""
    try:
        if not isinstance(url, str) or not url:
            raise ValueError("not a string")
        resolved = (base or session.base_url).join(url)
    except (ValueError, httpx.InvalidURL):
        raise InvalidInputError(f"the hub sent an invalid URL {redact(str(url))!r}") from None
    if resolved.scheme not in ("http", "https") or not resolved.host or resolved.userinfo:
        raise InvalidInputError(f"the hub sent a URL that is not plain http(s): {redact(resolved)}")
    return resolved


def _build(session: httpx.Client, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
    """A request on the session, with the token and cookies only for the hub's own origin."""
    request = session.build_request(method, url, **kwargs)
    if origin(request.url) != origin(session.base_url):
        request.headers.pop("Authorization", None)
        request.headers.pop("Cookie", None)
    return request


# --- moving bytes --------------------------------------------------------------


def _file_chunks(path: Path, bar: tqdm) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            bar.update(len(block))
            yield block


def upload(session: httpx.Client, target: UploadTarget, path: Path, bar: tqdm) -> None:
    """Send one file to the URL the hub handed out (its own, or presigned S3)."""
    size = target.entry.size
    headers = {**target.headers, "Content-Length": str(size)}
    request = _build(session, target.method, target.url, content=_file_chunks(path, bar), headers=headers)
    try:
        response = session.send(request, stream=True)
        try:
            if response.status_code == 412:  # If-None-Match: someone stored the same blob first
                return
            if response.is_redirect:  # never followed: the body would go, and the token, where the hub did not say
                raise StorageError(f"the upload of {path.name} to {redact(target.url)} was answered with a redirect")
            raise_for_status(response)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        raise HubUnreachableError(f"upload of {path.name} to {redact(target.url)} failed: {exc}") from None


@contextmanager
def _get(session: httpx.Client, url: str) -> Iterator[httpx.Response]:
    """GET ``url`` and follow redirects by hand: once a redirect leaves the
    hub's origin, no later request carries the token, even one that comes back."""
    authorized = True
    for _ in range(MAX_REDIRECTS + 1):
        request = _build(session, "GET", url, headers={"Accept-Encoding": "identity"})
        if not authorized:
            request.headers.pop("Authorization", None)
            request.headers.pop("Cookie", None)
        authorized = "Authorization" in request.headers
        response = session.send(request, stream=True)
        if not response.is_redirect:
            try:
                yield response
            finally:
                response.close()
            return
        response.close()
        url = absolute_url(session, response.headers["location"], base=request.url)
    raise HubUnreachableError(f"more than {MAX_REDIRECTS} redirects from {redact(url)}")


def download(
    session: httpx.Client, url: str, sha256: str, size: int, cache: BlobCache, bar: tqdm, *, name: str = "file"
) -> Path:
    """Fetch a file into the cache, verify it, and return its cached path.

    The bytes go to a temporary file that is removed on any failure: a cut
    connection, an error status, a body longer or shorter than ``size`` or
    one that hashes to anything but ``sha256``.
    """
    check_sha256(sha256)
    tmp = cache.incomplete_path(sha256)
    digest, received = hashlib.sha256(), 0
    try:
        with _get(session, url) as response:
            raise_for_status(response)
            declared = response.headers.get("content-length")
            if declared is not None and declared.strip() != str(size):
                raise ChecksumMismatchError(f"{name}: the server announced {declared:.20} bytes, expected {size}")
            with open(tmp, "wb") as fh:
                for block in response.iter_raw(CHUNK):  # raw: the sha256 is of the bytes as stored
                    received += len(block)
                    if received > size:
                        raise ChecksumMismatchError(f"{name}: the server sent more than the expected {size} bytes")
                    digest.update(block)
                    fh.write(block)
                    bar.update(len(block))
        if received != size:
            raise ChecksumMismatchError(f"{name}: received {received} bytes, expected {size}")
        if digest.hexdigest() != sha256:
            raise ChecksumMismatchError(f"{name}: downloaded bytes hash to {digest.hexdigest()}, expected sha256 {sha256}")
        final = cache.blob_path(sha256)
        os.replace(tmp, final)
        return final
    except httpx.HTTPError as exc:
        raise HubUnreachableError(f"download of {name} failed after {received} bytes: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
