"""Receiving a request body into the blob store, verified on the way.

Both upload routes use this: the native one on local storage, and the
Hugging Face LFS one on either backend; :func:`join_parts` makes a blob of
parts that were received that way (a resumable upload, see
:mod:`peft_hub.hub.routes.uploads`). Writes happen in a worker thread, in
1 MiB pieces, so the event loop never blocks on disk or S3.

Every route that uses the store runs under a storage slot
(:func:`storage_slot`, taken by the ``StoreDep`` dependency), so a slow store
holds at most ``storage_concurrency`` worker threads and database
connections: requests that need no store keep being answered.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from typing import IO, Any

import anyio
from starlette.concurrency import run_in_threadpool

from peft_hub.errors import StorageUnavailableError
from peft_hub.hub.storage import BlobStore

FEED_BYTES = 1024 * 1024
log = logging.getLogger("peft_hub.hub")
#: Whether this request (its task, and the worker threads it starts) holds a storage slot.
_HOLDING: ContextVar[bool] = ContextVar("peft_hub_storage_slot", default=False)


def holds_slot() -> bool:
    """Whether the running request holds a storage slot already (work nested in it takes no second one)."""
    return _HOLDING.get()


@asynccontextmanager
async def storage_slot(state: Any) -> AsyncIterator[None]:
    """Hold one of the app's ``storage_concurrency`` storage slots.

    A free slot is taken at once, with no cancel scope and no trip through
    the loop (a warm 302 spent about half its time there). Otherwise the wait
    is on the event loop (no thread, no connection held) and lasts at most
    ``storage_queue_timeout``; then a 503 says the store is busy.
    """
    limiter = state.store_limiter
    borrower = object()  # released by whichever task ends the request
    try:
        limiter.acquire_on_behalf_of_nowait(borrower)
    except anyio.WouldBlock:
        await _wait_for_slot(state, borrower)
    held = _HOLDING.set(True)
    try:
        yield
    finally:
        limiter.release_on_behalf_of(borrower)
        with suppress(ValueError):  # ended in another context than it began: that one ends with its task
            _HOLDING.reset(held)


async def _wait_for_slot(state: Any, borrower: object) -> None:
    limiter, settings = state.store_limiter, state.settings
    try:
        with anyio.fail_after(settings.storage_queue_timeout):
            await limiter.acquire_on_behalf_of(borrower)
    except TimeoutError:
        raise StorageUnavailableError(
            f"storage ({state.store.where}) is busy: its {limiter.total_tokens:g} slots stayed taken for "
            f"{settings.storage_queue_timeout:g} s (is it slow?); retry",
            retry_after=max(1, round(settings.storage_queue_timeout)),
        ) from None


async def receive(store: BlobStore, sha256: str, size: int, chunks: AsyncIterator[bytes]) -> None:
    """Write a request body into the store; nothing is kept unless it verifies."""
    writer = await run_in_threadpool(store.writer, sha256, size)
    try:
        pending = bytearray()
        async for chunk in chunks:
            pending += chunk
            if len(pending) >= FEED_BYTES:
                await run_in_threadpool(writer.write, bytes(pending))
                pending.clear()
        if pending:
            await run_in_threadpool(writer.write, bytes(pending))
        await run_in_threadpool(writer.commit)
    except BaseException:
        try:  # drop what was received; a failure here must not hide the first one
            await run_in_threadpool(writer.abort)
        except Exception as exc:  # sweep_stale removes the leftovers later
            log.warning("could not drop the partial upload of %s: %s", sha256, exc)
        raise
    await run_in_threadpool(writer.abort)


def put_small(store: BlobStore, sha256: str, data: bytes) -> bool:
    """Store a small blob received whole, unless it is already there.

    Returns:
        Whether this call stored it (so a refused commit can take it back).
    """
    if _vouched(store, sha256, len(data)):
        return False
    store.put(sha256, len(data), [data])
    return True


def put_staged(store: BlobStore, sha256: str, size: int, file: IO[bytes]) -> bool:
    """:func:`put_small` for a blob staged in a file (a large inline HF file),
    read back in FEED_BYTES pieces; the store verifies the sha256 again."""
    if _vouched(store, sha256, size):
        return False
    file.seek(0)
    store.put(sha256, size, iter(lambda: file.read(FEED_BYTES), b""))
    return True


def join_parts(store: BlobStore, sha256: str, size: int, parts: list[str]) -> None:
    """Store the concatenation of the stored blobs ``parts`` under ``sha256``,
    read in FEED_BYTES pieces (bounded memory); nothing is kept unless the
    whole hashes to ``sha256`` with exactly ``size`` bytes.

    Raises:
        ChecksumMismatchError: the parts do not make up those bytes.
    """

    def chunks() -> Iterator[bytes]:
        for part in parts:
            with store.open(part) as fh:
                while block := fh.read(FEED_BYTES):
                    yield block

    store.put(sha256, size, chunks())


def _vouched(store: BlobStore, sha256: str, size: int) -> bool:
    """The store holds these bytes and vouches for them (S3's checksum); else
    they are rewritten, which repairs a damaged copy."""
    stat = store.stat(sha256)
    return stat is not None and stat.size == size and stat.verified_sha256 == sha256
