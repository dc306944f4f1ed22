"""Moving bytes: uploads to the hub or to presigned S3 URLs, and downloads
into the cache with sha256 verification, both with progress bars.

Both are retried on failures that may pass (see :mod:`peft_hub.client.http`):
an upload is a content-addressed PUT, so sending it again is harmless; a
download that was cut resumes with a Range request from the bytes it holds
when the server answers 206 for exactly that range, and starts again when it
does not. The sha256 covers every byte on disk, resumed or not.

The hub's answers decide what moves where, so they are checked before any
byte moves: file names, digests, sizes and revision ids must be exactly what
the registry itself would store, an upload may only send a file this push
holds, and the token travels only to the hub's own origin (scheme, host and
port), whatever a preupload answer or a redirect says.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from peft_hub.adapter import FileEntry
from peft_hub.adapter_files import MAX_FILES, size_cap, validate_filename
from peft_hub.client.cache import BlobCache, Partial, check_name, check_revision, check_sha256
from peft_hub.client.http import NO_RETRY, RetryPolicy, origin, raise_for_status, redact, transient
from peft_hub.errors import (
    ChecksumMismatchError,
    EntryNotFoundError,
    HubUnreachableError,
    InvalidAdapterError,
    InvalidInputError,
    NotFoundError,
    PeftHubError,
    StorageError,
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


def upload(session: httpx.Client, target: UploadTarget, path: Path, bar: tqdm, *, retry: RetryPolicy = NO_RETRY) -> None:
    """Send one file to the URL the hub handed out (its own, or presigned S3).

    Retried as an idempotent request: the target is named by the blob's
    sha256, so the same bytes land under the same name however often they go.
    """
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        with open(path, "rb") as fh:
            while block := fh.read(CHUNK):
                sent += len(block)
                bar.update(len(block))
                yield block

    headers = {**target.headers, "Content-Length": str(target.entry.size)}
    try:
        for attempt in retry.retrying(lambda exc: transient(exc, idempotent=True)):
            with attempt:
                bar.update(-sent)  # a new try sends the file from its start
                sent = 0
                request = _build(session, target.method, target.url, content=chunks(), headers=headers)
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
def _get(session: httpx.Client, url: str | httpx.URL, headers: dict[str, str]) -> Iterator[httpx.Response]:
    """GET ``url`` and follow redirects by hand: once a redirect leaves the
    hub's origin, no later request carries the token, even one that comes back."""
    authorized = True
    for _ in range(MAX_REDIRECTS + 1):
        request = _build(session, "GET", url, headers=headers)
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


class _Restart(Exception):  # noqa: N818 - a control-flow signal caught in this module, like StopIteration
    """The server's answer cannot continue the bytes held; the next try starts the file again."""


@dataclass
class _Fetch:
    """One file's download across tries: the bytes on disk and their running hash."""

    part: Partial
    size: int
    bar: tqdm
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    resumed: bool = False  # some bytes came from a ranged answer
    ranges: bool = True  # whether to ask for a range at all

    def restart(self) -> None:
        self.bar.update(-self.received)
        self.part.fh.seek(0)
        self.part.fh.truncate()
        self.received, self.digest, self.resumed = 0, hashlib.sha256(), False

    def once(self, session: httpx.Client, url: str) -> None:
        """One try: ask for the bytes not yet held, and append what comes."""
        offset = self.received if self.ranges and 0 < self.received < self.size else 0
        if self.received and not offset:
            self.restart()
        headers = {"Accept-Encoding": "identity"}  # the sha256 is of the bytes as stored
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with _get(session, url, headers) as response:
            if offset and response.status_code == 416:
                self.ranges = False
                raise _Restart("the server refused the range")
            raise_for_status(response)
            if offset and response.status_code == 206:
                if not _continues(response.headers.get("content-range"), offset, self.size):
                    self.ranges = False
                    raise _Restart(f"the server sent the range {response.headers.get('content-range')!r:.60}")
                self.resumed = True
            elif offset:  # the whole file again: the server ignores ranges
                self.restart()
            elif response.status_code == 206:
                raise ChecksumMismatchError("the hub answered with part of the file, unasked")
            expected = self.size - self.received
            declared = response.headers.get("content-length")
            if declared is not None and declared.strip() != str(expected):
                raise ChecksumMismatchError(f"the hub announced {declared:.20} bytes, not the {expected} expected")
            for block in response.iter_raw():  # no chunk size: a buffered chunk would be lost on a cut
                if self.received + len(block) > self.size:
                    raise ChecksumMismatchError(f"the hub sent more than the {self.size} bytes the file has")
                self.part.fh.write(block)
                self.digest.update(block)
                self.received += len(block)
                self.bar.update(len(block))


def _continues(content_range: str | None, offset: int, size: int) -> bool:
    """Whether a 206's Content-Range is exactly ``offset`` to the end of a ``size``-byte file."""
    unit, _, spec = (content_range or "").strip().partition(" ")
    span, _, total = spec.partition("/")
    return unit == "bytes" and span == f"{offset}-{size - 1}" and total in ("*", str(size))


def download(
    session: httpx.Client, url: str, sha256: str, size: int, cache: BlobCache, bar: tqdm, *, name: str = "file",
    retry: RetryPolicy = NO_RETRY,
) -> Path:
    """Fetch a file into the cache, verify it, and return its cached path.

    The bytes go to a temporary file that is removed on any failure: a
    connection that stays broken, an error status, a body longer or shorter
    than ``size``, or one that hashes to anything but ``sha256``. Errors name
    the file as ``name`` (e.g. ``owner/name@revision: file``); a file the
    store does not have is an EntryNotFoundError.
    """
    check_sha256(sha256)
    with cache.partial(sha256) as part:
        fetch = _Fetch(part, size, bar)
        try:
            for last in (False, True):
                for attempt in retry.retrying(_retryable, progress=lambda: fetch.received):
                    with attempt:
                        fetch.once(session, url)
                if fetch.received != size:
                    raise ChecksumMismatchError(f"the hub served {fetch.received} bytes, not {size}")
                if fetch.digest.hexdigest() == sha256:
                    return cache.commit(part, sha256)
                if last or not fetch.resumed:
                    raise ChecksumMismatchError(f"the hub served {size} bytes hashing to {fetch.digest.hexdigest()}, "
                                                f"not {sha256}")
                fetch.ranges = False  # stitched from ranges that do not fit: fetch it whole, once
                fetch.restart()
        except httpx.HTTPError as exc:
            raise HubUnreachableError(f"{name}: download failed after {fetch.received} bytes: {exc}") from None
        except _Restart as exc:
            raise StorageError(f"{name}: download failed after {fetch.received} bytes: {exc}") from None
        except PeftHubError as exc:
            raise _named(exc, name) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Restart) or transient(exc, idempotent=True)


def _named(exc: PeftHubError, name: str) -> PeftHubError:
    """``exc`` again, its message prefixed with the file it is about; a plain
    404 (an object store's) means the store lacks the file: EntryNotFoundError."""
    cls: type[PeftHubError] = EntryNotFoundError if type(exc) is NotFoundError else type(exc)
    text = f"{name}: the hub's store does not have it ({exc})" if cls is not type(exc) else f"{name}: {exc}"
    new = cls(text)
    new.__dict__.update({k: v for k, v in exc.__dict__.items() if k != "message"})
    return new
