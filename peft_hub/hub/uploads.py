"""Receiving a request body into the blob store, verified on the way.

Both upload routes use this: the native one on local storage, and the
Hugging Face LFS one on either backend. Writes happen in a worker thread, in
1 MiB pieces, so the event loop never blocks on disk or S3.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from peft_hub.hub.storage import BlobStore

FEED_BYTES = 1024 * 1024


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
    finally:
        await run_in_threadpool(writer.abort)


def put_small(store: BlobStore, sha256: str, data: bytes) -> bool:
    """Store a small blob received whole, unless it is already there.

    Returns:
        Whether this call stored it (so a refused commit can take it back).
    """
    stat = store.stat(sha256)
    if stat is not None and stat.size == len(data) and stat.verified_sha256 == sha256:
        return False  # the store vouches for these bytes (S3's checksum); else rewrite, which repairs
    store.put(sha256, len(data), [data])
    return True
