"""Downloads into the cache, retried, resumed and verified by sha256.

A download that was cut resumes with a Range request from the bytes it holds
when the server answers 206 for exactly that range, and starts again when it
does not. The sha256 covers every byte on disk, resumed or not. Redirects are
followed by hand, so the token never follows one off the hub's origin.

A download may write a second file as it goes (``mirror``: the ``pull -o``
staging copy), from the same buffers, so nothing is copied afterwards; the
mirror is removed with the temporary file when the download fails.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import httpx

from peft_hub.client import ranged
from peft_hub.client.cache import BlobCache, Partial
from peft_hub.client.http import build_request, raise_for_status, redact
from peft_hub.client.names import check_sha256
from peft_hub.client.retry import NO_RETRY, RetryPolicy, transient
from peft_hub.client.transfers import absolute_url
from peft_hub.errors import (
    ChecksumMismatchError,
    EntryNotFoundError,
    HubUnreachableError,
    NotFoundError,
    PeftHubError,
    StorageError,
)
from peft_hub.progress import tqdm
from peft_hub.staging import delete

MAX_REDIRECTS = 5

T = TypeVar("T")


@contextmanager
def _get(session: httpx.Client, url: str | httpx.URL, headers: dict[str, str]) -> Iterator[httpx.Response]:
    """GET ``url`` and follow redirects by hand: once a redirect leaves the
    hub's origin, no later request carries the token, even one that comes back."""
    authorized = True
    for _ in range(MAX_REDIRECTS + 1):
        request = build_request(session, "GET", url, headers=headers)
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


class _Hasher:
    """The sha256 of the blocks given, computed on a thread of its own, so
    that hashing overlaps receiving (hashlib releases the GIL on large blocks).
    At most ``depth`` blocks wait: memory stays bounded."""

    def __init__(self, depth: int = 64) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            self._digest.update(block)

    def update(self, block: bytes) -> None:
        self._queue.put(block)

    def close(self) -> None:
        """Stop the thread once it has hashed every block given (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()


class _Restart(Exception):  # noqa: N818 - a control-flow signal caught in this module, like StopIteration
    """The server's answer cannot continue the bytes held; the next try starts the file again."""


@dataclass
class _Fetch:
    """One file's download across tries: the bytes on disk and their running hash."""

    part: Partial
    size: int
    bar: tqdm
    mirror: BinaryIO | None = None  # a second destination for the same bytes
    received: int = 0
    digest: _Hasher = field(default_factory=_Hasher)
    resumed: bool = False  # some bytes came from a ranged answer
    ranges: bool = True  # whether to ask for a range at all

    def restart(self) -> None:
        self.bar.update(-self.received)
        self.truncate()
        self.digest.close()
        self.received, self.digest, self.resumed = 0, _Hasher(), False

    def truncate(self) -> None:
        """Empty the file (and the mirror), to be written again from the start."""
        for fh in (self.part.fh, self.mirror):
            if fh is not None:
                fh.seek(0)
                fh.truncate()

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
                if self.mirror is not None:
                    self.mirror.write(block)
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
    retry: RetryPolicy = NO_RETRY, mirror: Path | None = None,
) -> Path:
    """Fetch a file into the cache, verify it, and return its cached path.

    The bytes go to a temporary file that is removed on any failure: a
    connection that stays broken, an error status, a body longer or shorter
    than ``size``, or one that hashes to anything but ``sha256``. Errors name
    the file as ``name`` (e.g. ``owner/name@revision: file``); a file the
    store does not have is an EntryNotFoundError. ``mirror``, a new file's
    path (in a staging directory), gets the same bytes as they arrive, and is
    removed on failure; it holds the verified bytes when this returns.
    """
    check_sha256(sha256)
    with cache.partial(sha256) as part, _mirror(mirror) as second:
        fetch = _Fetch(part, size, bar, second)
        passes: tuple[bool, ...] = (False, True)
        try:
            if size >= ranged.MIN_SIZE:
                digest = ranged.fetch(session, url, size, part.fh.fileno(), bar, retry=retry, opener=_get,
                                      mirror=None if second is None else second.fileno())
                if digest == sha256:
                    return cache.commit(part, sha256)
                if digest is not None:  # stitched from ranges that do not fit: fetch it whole, once
                    bar.update(-size)
                    fetch.ranges, passes = False, (True,)
                fetch.truncate()
            for last in passes:
                for attempt in retry.retrying(_retryable, progress=lambda: fetch.received):
                    with attempt:
                        fetch.once(session, url)
                if fetch.received != size:
                    raise ChecksumMismatchError(f"the hub served {fetch.received} bytes, not {size}")
                digest = fetch.digest.hexdigest()
                if digest == sha256:
                    return cache.commit(part, sha256)
                if last or not fetch.resumed:
                    raise ChecksumMismatchError(f"the hub served {size} bytes hashing to {digest}, not {sha256}")
                fetch.ranges = False  # stitched from ranges that do not fit: fetch it whole, once
                fetch.restart()
        except httpx.HTTPError as exc:
            raise HubUnreachableError(f"{name}: download failed after {fetch.received} bytes: {exc}") from None
        except _Restart as exc:
            raise StorageError(f"{name}: download failed after {fetch.received} bytes: {exc}") from None
        except PeftHubError as exc:
            raise _named(exc, name) from None
        finally:
            fetch.digest.close()
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_all(fetch: Callable[[T], object], files: Sequence[T], size: Callable[[T], int]) -> None:
    """Call ``fetch`` on every file: the small ones (below :data:`ranged.MIN_SIZE`) one after
    another on a thread of their own, while the large ones are fetched here, each in ranged
    streams. A small file's round trips (resolve, redirect, GET, fsync) then no longer come
    before the weights' first byte.

    Errors: the first large file that fails stops the small ones after the one in flight
    (which ends within its own retry policy: it is small), and its error is raised once that
    thread has stopped, so nothing is written after this returns; a small file's error is
    raised after the large ones are done. With only small or only large files, all are
    fetched here, in order."""
    small = [f for f in files if size(f) < ranged.MIN_SIZE]
    if not small or len(small) == len(files):
        for f in files:
            fetch(f)
        return
    stop = threading.Event()

    def small_ones() -> None:
        for f in small:
            if stop.is_set():
                return
            fetch(f)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pull-small") as pool:
        beside = pool.submit(small_ones)
        try:
            for f in files:
                if size(f) >= ranged.MIN_SIZE:
                    fetch(f)
        except BaseException:
            stop.set()
            raise
        beside.result()


@contextmanager
def _mirror(path: Path | None) -> Iterator[BinaryIO | None]:
    """A new file at ``path`` (never an existing one, nor through a link), removed unless the block succeeds."""
    if path is None:
        yield None
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    ok = False
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        ok = True
    finally:
        if not ok:
            delete(path)


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
