"""A large blob fetched as parallel ranged GETs, written in place with
``pwrite`` and hashed from the file as its written prefix grows.

The first range, small (:data:`FIRST`), goes through the hub (which
redirects to the store's presigned URL, or answers itself); the others go
straight to the URL that first answer came from, with the token only if the
first request still carried it. A server that answers the first range with
the whole body (or refuses ranges) gets the single stream of
:mod:`peft_hub.client.download` instead. Any other answer that is not
exactly the range asked for is refused. Each range resumes from the bytes it holds when its connection
is cut, and is retried per the pull's policy. Ranges sent without the token
(to a presigned URL) are read into one preallocated buffer per stream by
:mod:`peft_hub.client.rawhttp` where it can keep the session's promises, and
written and hashed from a view of it; elsewhere httpx carries them.

The sha256 runs over the file in order. A block that arrives exactly where
the hash stands is hashed from the network buffer by the stream that got it;
bytes that arrived out of order are hashed later, by a thread of its own,
read back from the file (the page cache is hot) once the prefix before them
is complete. The file's blocks are reserved before the first range is
written (:func:`peft_hub.disk.reserve`: a disk without room for the file is
refused before any byte is fetched), and the written bytes are handed to
the kernel's writeback as each span grows (every :data:`_FLUSH` bytes), so
the cache's fsync at the end has little left to do. Memory holds one network
block per stream and one read block.

A ``mirror`` (the ``pull -o`` directory's staging file) gets every block too,
written from the same buffer at the same offset, so no copy follows the
download; it is only a second destination, and the hash is of the first.
Nothing fsyncs it, so it gets no writeback hint: its disk writes do not
compete with the cache's during the pull.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from functools import partial

import httpx

from peft_hub import disk
from peft_hub.client import rawhttp
from peft_hub.client.http import build_request, raise_for_status
from peft_hub.client.retry import RetryPolicy, transient
from peft_hub.errors import ChecksumMismatchError, StorageError
from peft_hub.progress import tqdm

#: Blobs at least this large are fetched in ranges.
MIN_SIZE = 32 * 1024 * 1024
#: Bytes per range (boto3's part size).
PART = 8 * 1024 * 1024
#: Parallel streams: one per core, 2 to 6. The sha256 runs in file order, so every stream
#: beyond what the cores can serve only widens the out-of-order window the hash reads back
#: after the last byte: on 2 cores, 2 streams pulled 105 MB in about 200 ms and 6 in about
#: 225 ms (bytes all received by 160-190 ms, then about 40 ms of hashing alone).
STREAMS = max(2, min(6, os.cpu_count() or 2))
#: Bytes of the first range (through the hub and httpx): the hash waits for it.
FIRST = 1024 * 1024
_READ = 1024 * 1024
#: A span's written bytes are handed to writeback in pieces of at least this much (page-aligned).
_FLUSH = 2 * 1024 * 1024
_PAGE = 4096

Opener = Callable[[httpx.Client, str, dict[str, str]], AbstractContextManager[httpx.Response]]


class _Short(Exception):  # noqa: N818 - a retryable signal, like download._Restart
    """A range ended before its last byte; the next try asks for the rest."""


class _Stopped(Exception):  # noqa: N818
    """Another range failed: this one stops."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Short) or transient(exc, idempotent=True)


class _Ranges:
    """The ranges of one file: what each holds, the hashed prefix, the pool's work."""

    def __init__(self, fds: tuple[int, ...], size: int, bar: tqdm) -> None:
        self.fd, self.fds, self.size, self.bar = fds[0], fds, size, bar
        first = min(FIRST, PART, size)
        # Span boundaries fall on multiples of PART (the first span ends early, the second fills up
        # to PART): a store keeps an object in chunks of a power-of-two size, and a range across two
        # of them costs it both. Misaligned 8 MiB ranges cost SeaweedFS a quarter more CPU per pull.
        bounds = sorted({0, first, *range(PART, size, PART), size})
        self.spans = list(itertools.pairwise(bounds))
        self.done = [0] * len(self.spans)  # bytes held from each span's start, contiguous
        self.flushed = [0] * len(self.spans)  # bytes from each span's start handed to writeback
        self.todo: deque[int] = deque(range(1, len(self.spans)))
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self._open = 0  # the first span not yet complete
        self._sha = hashlib.sha256()
        self.hashed = 0  # bytes hashed, from the start, in order
        self.hashing = False  # a thread holds ``_sha`` (the stream at the front, or the reader)

    def headers(self, i: int) -> dict[str, str]:
        a, b = self.spans[i]
        return {"Accept-Encoding": "identity", "Range": f"bytes={a + self.done[i]}-{b - 1}"}

    def check(self, response: httpx.Response | rawhttp.Response, i: int) -> None:
        """Refuse any answer but exactly the bytes asked for."""
        a, b = self.spans[i]
        start = a + self.done[i]
        if response.status_code != 206:
            raise ChecksumMismatchError(f"the server answered a range with HTTP {response.status_code}")
        got = response.headers.get("content-range", "")
        if got.strip() != f"bytes {start}-{b - 1}/{self.size}":
            raise ChecksumMismatchError(f"the server answered the range {start}-{b - 1} with {got!r:.60}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip() != str(b - start):
            raise ChecksumMismatchError(f"the server announced {declared:.20} bytes for a range of {b - start}")

    def write(self, response: httpx.Response, i: int) -> None:
        for block in response.iter_raw():
            self.take(block, i)
        self.finish(i)

    def read_into(self, response: rawhttp.Response, i: int, view: memoryview) -> None:
        """Like :meth:`write`, the body read into ``view`` and taken from it: no bytes objects."""
        a, b = self.spans[i]
        while (left := b - a - self.done[i]) > 0:
            n = response.readinto(view[:min(len(view), left)])
            if not n:
                break
            self.take(view[:n], i)
        if self.done[i] == b - a and response.readinto(view[:1]):  # framed by its close, not its length
            raise ChecksumMismatchError(f"the server sent more than the range {a}-{b - 1}")
        self.finish(i)

    def take(self, block: bytes | memoryview, i: int) -> None:
        """One block of span ``i``, written where it belongs (and hashed if it is next in order)."""
        if self.stop.is_set():
            raise _Stopped
        a, b = self.spans[i]
        pos, size = a + self.done[i], len(block)
        if pos + size > b:
            raise ChecksumMismatchError(f"the server sent more than the range {a}-{b - 1}")
        for fd in self.fds:
            if os.pwrite(fd, block, pos) != size:
                raise StorageError("a short write to the file being downloaded (is the disk full?)")
        start, end = a + self.flushed[i], (pos + size) // _PAGE * _PAGE  # only span i's stream touches these
        if end - start >= _FLUSH:
            disk.writeback(self.fd, start, end - start)
            self.flushed[i] = end - a
        with self.cond:
            self.done[i] += size
            self.bar.update(size)
            mine = not self.hashing and pos == self.hashed
            self.hashing |= mine
        if mine:  # next in order: hashed from memory, never read back
            self._sha.update(block)
            with self.cond:
                self.hashed += size
                self.hashing = False
                if self.mark() > self.hashed or self.hashed == self.size:
                    self.cond.notify_all()  # bytes that came out of order wait, or the hash is done

    def finish(self, i: int) -> None:
        """Span ``i`` ended: complete, or a :class:`_Short` to resume."""
        a, b = self.spans[i]
        if self.done[i] != b - a:
            raise _Short(f"the range {a}-{b - 1} ended after {self.done[i]} bytes")
        disk.writeback(self.fd, a + self.flushed[i], b - a - self.flushed[i])  # the cache's file alone

    def halt(self) -> None:
        """Stop every stream and the hash: one range failed."""
        with self.cond:
            self.stop.set()
            self.cond.notify_all()

    def mark(self) -> int:
        """The end of the contiguous written prefix (under ``cond``)."""
        spans, done = self.spans, self.done
        while self._open < len(spans) and done[self._open] == spans[self._open][1] - spans[self._open][0]:
            self._open += 1
        return self.size if self._open == len(self.spans) else self.spans[self._open][0] + self.done[self._open]

    def digest(self) -> str:
        """The sha256 of the file as written: the bytes no stream hashed from
        memory are read back here, in order, as the written prefix grows."""
        while True:
            with self.cond:
                while True:
                    if self.stop.is_set():
                        raise _Stopped
                    if self.hashed == self.size:
                        return self._sha.hexdigest()
                    if not self.hashing and (end := self.mark()) > self.hashed:
                        break
                    self.cond.wait()
                self.hashing, pos, data = True, self.hashed, b""
            try:
                data = os.pread(self.fd, min(_READ, end - pos), pos)
                if not data:
                    raise StorageError("the file being downloaded shrank while it was hashed")
                self._sha.update(data)
            finally:
                with self.cond:
                    self.hashed += len(data)
                    self.hashing = False


def fetch(session: httpx.Client, url: str, size: int, fd: int, bar: tqdm, *, retry: RetryPolicy,
          opener: Opener, mirror: int | None = None) -> str | None:
    """Fill ``fd`` (``size`` bytes) from ``url`` in parallel ranges; return the file's sha256.

    ``mirror``, a second open file, receives the same bytes at the same offsets.
    Returns None, with nothing counted on ``bar``, when the server does not
    serve ranges (the caller fetches the file whole). Raises on a failure that
    retries did not cure, or on an answer that is not the range asked for.
    """
    fds = (fd,) if mirror is None else (fd, mirror)
    state = _Ranges(fds, size, bar)
    for each in fds:  # the blocks reserved first: the spans are written out of order
        if not disk.reserve(each, size):
            raise StorageError(f"not enough disk space for a download of {size} bytes")
        os.ftruncate(each, size)
    with ExitStack() as stack:
        response = None
        for attempt in retry.retrying(_retryable):
            with attempt:
                stack.close()
                response = stack.enter_context(opener(session, url, state.headers(0)))
                if response.status_code in (200, 416):  # the whole file, or no ranges: one stream
                    return None
                raise_for_status(response)
                state.check(response, 0)
        assert response is not None
        auth = "authorization" in response.request.headers
        direct = response.request.url  # the store's URL the hub redirected to, or the hub's own
        with ThreadPoolExecutor(max_workers=STREAMS, thread_name_prefix="range") as pool:
            hashed = pool.submit(state.digest)
            tasks = [pool.submit(_work, session, direct, auth, state, retry) for _ in range(STREAMS - 1)]
            errors: list[BaseException] = []
            try:
                try:
                    state.write(response, 0)
                except (_Short, httpx.TransportError):
                    state.todo.appendleft(0)  # resumed by a stream with retries
                stack.close()
                _work(session, direct, auth, state, retry)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the streams stopped
                state.halt()
                errors.append(exc)
            errors += [e for t in tasks if (e := t.exception()) is not None]
            if not errors:
                return hashed.result()
            state.halt()
            error = next((e for e in errors if not isinstance(e, _Stopped)), errors[0])
            raise StorageError(f"download failed: {error}") if isinstance(error, _Short) else error
    raise AssertionError("unreachable")  # pragma: no cover


def _work(session: httpx.Client, url: httpx.URL, auth: bool, state: _Ranges, retry: RetryPolicy) -> None:
    """Fetch ranges until none is left, each retried and resumed; without the token,
    read into a buffer of this stream's own (:mod:`peft_hub.client.rawhttp`) where it can be."""
    direct = None if auth else rawhttp.for_url(session, url)
    view = memoryview(bytearray(_READ)) if direct is not None else None
    try:
        while not state.stop.is_set():
            try:
                i = state.todo.popleft()
            except IndexError:
                return
            try:
                for attempt in retry.retrying(_retryable, progress=partial(state.done.__getitem__, i)):
                    with attempt:
                        request = build_request(session, "GET", url, headers=state.headers(i))
                        if not auth:
                            request.headers.pop("Authorization", None)
                            request.headers.pop("Cookie", None)
                        if direct is not None and view is not None:
                            _direct(direct, request, state, i, view)
                        else:
                            _through_httpx(session, request, state, i)
            except BaseException:
                state.halt()
                raise
    finally:
        if direct is not None:
            direct.close()


def _through_httpx(session: httpx.Client, request: httpx.Request, state: _Ranges, i: int) -> None:
    response = session.send(request, stream=True)
    try:
        raise_for_status(response)
        state.check(response, i)
        state.write(response, i)
    finally:
        response.close()


def _direct(direct: rawhttp.Direct, request: httpx.Request, state: _Ranges, i: int, view: memoryview) -> None:
    """One try of span ``i`` over the stdlib's connection; kept alive only after a complete answer."""
    response = direct.open(request.headers)
    done = False
    try:
        response.raise_for_status()
        state.check(response, i)
        state.read_into(response, i, view)
        done = True
    finally:
        response.close(reusable=done)
