"""Verify stored blobs and publish a revision.

Both push paths, the native API and the Hugging Face–compatible one, end
here: the author must hold every blob it names (see ``possession``), every
blob is checked (present, right size, right sha256), the adapter
is validated again from the stored bytes, and only then is the revision
committed in one transaction.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO, cast

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterMeta, FileEntry, manifest_digest
from peft_hub.errors import ChecksumMismatchError, InvalidAdapterError, StorageError, UploadRequiredError
from peft_hub.hub import audit, base_compat, crud, events, ledger, possession
from peft_hub.hub.auth import Principal, require_write
from peft_hub.hub.models import Adapter, Blob, Revision, RevisionFile
from peft_hub.hub.storage import BlobStat, BlobStore
from peft_hub.names import validate_repo_id
from peft_hub.repo_kinds import Kind, check_entries, infer_kind, kind_mismatch, validate_manifest


def verify_blob(
    session: Session, store: BlobStore, principal: Principal, entry: FileEntry, row: Blob | None,
    asked: Future[BlobStat] | None = None,
) -> None:
    """Make sure the stored blob is exactly the declared bytes, in the write
    transaction, with the blob's ledger row locked (so no gc can remove it
    before the commit).

    Bytes are trusted without reading them when the store keeps a checksum of
    its own (S3) or the file has not changed since the hub verified it (as
    :func:`verify_outside` just did); otherwise they are read and hashed here.
    Nothing is deleted for a wrong declared size, and a blob whose bytes do
    not verify is discarded only when it is the caller's own unreferenced upload.
    ``asked``: the store's answer for ``entry``, asked for already (see :func:`_stats`).
    """
    stat = _checked_stat(store, entry) if asked is None else asked.result()
    if ledger.trusted(row, stat):
        return
    digest = ledger.hash_stored(store, entry.sha256)
    if digest != entry.sha256:
        possession.discard_if_own(session, store, principal, entry.sha256)
        raise ChecksumMismatchError(f"{entry.path}: stored bytes hash to {digest}, not {entry.sha256}")
    ledger.note_verified(session, store, entry.sha256, entry.size)


def _checked_stat(store: BlobStore, entry: FileEntry) -> BlobStat:
    return _checked(entry, store.stat(entry.sha256))


def _checked(entry: FileEntry, stat: BlobStat | None) -> BlobStat:
    """The store's answer for ``entry``, refused when the blob is missing or of another size."""
    if stat is None:
        raise UploadRequiredError(f"{entry.path}: blob {entry.sha256} is not stored (any more); upload it again")
    if stat.size != entry.size:
        raise ChecksumMismatchError(f"{entry.path}: blob {entry.sha256} is {stat.size} bytes, not {entry.size}")
    return stat


def _stats(pool: Executor, store: BlobStore, entries: list[FileEntry]) -> list[Future[BlobStat]]:
    """Every entry's checked stat, asked for at once (one store round trip,
    not one per file); the caller takes them in order, so the first bad entry
    is the one refused, as when they were asked for one by one."""
    return [pool.submit(_checked_stat, store, e) for e in entries]


def ask_stats(pool: Executor, store: BlobStore, entries: list[FileEntry]) -> dict[str, Future[BlobStat | None]]:
    """The store's answer (``store.stat``) for each distinct blob, asked for
    at once on ``pool``: one round trip, which the possession check and
    :func:`verify_outside` share."""
    return {sha256: pool.submit(store.stat, sha256) for sha256 in dict.fromkeys(e.sha256 for e in entries)}


def verify_outside(
    engine: Engine, store: BlobStore, principal: Principal, entries: list[FileEntry], pool: Executor,
    asked: Mapping[str, Future[BlobStat | None]] | None = None,
) -> None:
    """Hash every blob not yet trusted, holding no transaction while it reads
    (each ledger read or write is a short transaction of its own), so the
    write transaction that follows finds them trusted and reads no bytes.
    ``asked``: the store's answers from :func:`ask_stats`, if asked already
    (the write transaction asks again, under the blobs' locks)."""
    if asked is None:
        asked = ask_stats(pool, store, entries)
    with Session(engine) as session:
        wanted = sorted({e.sha256 for e in entries})
        rows = {r.sha256: r for r in session.exec(select(Blob).where(col(Blob.sha256).in_(wanted)))}
    for entry in entries:
        stat = _checked(entry, asked[entry.sha256].result())
        if ledger.trusted(rows.get(entry.sha256), stat):
            continue
        digest = ledger.hash_stored(store, entry.sha256)
        with Session(engine) as session:
            if digest != entry.sha256:  # under the blob's lock, as gc deletes
                ledger.lock(session, {entry.sha256: entry.size})
                possession.discard_if_own(session, store, principal, entry.sha256)
                session.commit()
                raise ChecksumMismatchError(f"{entry.path}: stored bytes hash to {digest}, not {entry.sha256}")
            ledger.note_verified(session, store, entry.sha256, entry.size)
            session.commit()


#: Files up to this size are read back whole and checked against their sha256;
#: of larger ones (weights) only the header, at the start, is read.
READ_WHOLE_BYTES = 64 * 1024 * 1024
HEADER_BYTES = 16 * 1024 * 1024 + 8
#: A large file's first read: its header's length and, for most adapters, the
#: whole header; a longer header costs one more read of exactly the rest.
HEADER_PROBE_BYTES = 1024 * 1024
#: At most this much of what one publish read back is kept for a second reader.
KEEP_BYTES = 2 * HEADER_BYTES
#: How many store requests one publish has in flight (stats, header reads).
STORE_STREAMS = 4


def read_back(store: BlobStore, entry: FileEntry) -> io.BytesIO:
    """The stored bytes validation reads, complete and verified: a small file
    whole, with its length and sha256 checked (a read cut short by the store
    fails the commit instead of storing a truncated card), or a large file's
    safetensors header (its 8-byte length, then as many bytes as it names, up
    to the header cap), with their length checked."""
    if entry.size <= READ_WHOLE_BYTES:
        data = _read_range(store, entry, 0, entry.size)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise StorageError(
                f"{entry.path}: the store returned bytes that do not hash to {entry.sha256}; nothing was published")
        return io.BytesIO(data)
    data = _read_range(store, entry, 0, min(entry.size, HEADER_PROBE_BYTES))
    (length,) = struct.unpack("<Q", data[:8])  # a large file's probe holds at least 8 bytes
    want = min(entry.size, HEADER_BYTES, 8 + length)  # past the cap or the end, the header check refuses it
    if want > len(data):
        data += _read_range(store, entry, len(data), want)
    return io.BytesIO(data)


def _read_range(store: BlobStore, entry: FileEntry, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` of a stored blob, exactly, or StorageError."""
    want, chunks, got = end - start, [], 0
    whole = start == 0 and end == entry.size
    with store.open(entry.sha256, start, None if whole else end) as fh:
        while got <= want and (chunk := fh.read(want + 1 - got)):  # a read may return less than asked
            chunks.append(chunk)
            got += len(chunk)
    data = b"".join(chunks)
    if len(data) != want:
        raise StorageError(
            f"{entry.path}: the store returned {len(data)} of {want} bytes; nothing was published, retry")
    return data


def publish(
    session: Session,
    store: BlobStore,
    *,
    principal: Principal | None,
    repo_id: str,
    entries: list[FileEntry],
    message: str = "",
    tags: Sequence[str] = (),
    private: bool | None = None,
    parent: str | None | bool = False,
    client: str = "",
    received: frozenset[str] = frozenset(),
    adapter_id: int | None = None,
) -> tuple[Adapter, Revision, bool]:
    """Verify, validate and commit a revision made of already-uploaded blobs,
    with its ``push`` audit event in the same transaction.

    ``session`` must not have written yet: the checks before the write
    transaction run in short sessions of their own, and ``session`` is used
    only for the publish itself (its caller commits it).

    Args:
        parent: see :func:`crud.publish_revision`; False for whole-manifest pushes.
        adapter_id: see :func:`crud.publish_revision` (an HF commit's existing repo).
        client: the caller's address, for the audit log.
        received: blobs the hub itself received from the caller in this
            request (an HF commit's inline files): held. Their receipts, and
            those of blobs proved by S3's recorded uploader, are written with
            the revision, so a refused commit leaves none.

    Returns:
        The adapter, the revision, and whether the revision is new.
    """
    owner, name = validate_repo_id(repo_id)
    principal = require_write(principal, owner)
    for tag in tags:
        crud.validate_tag(tag)
    kind = infer_kind(e.path for e in entries)
    check_entries(kind, entries)
    # Outside the write transaction: possession, hashing, validation (store reads).
    engine = cast(Engine, session.get_bind())  # a request's session is bound to the engine
    _check_kind(engine, owner, name, kind)
    with ThreadPoolExecutor(max_workers=STORE_STREAMS, thread_name_prefix="publish") as pool:
        # The store's answers (no bytes) are asked for while the database is
        # read; each is taken where the checks always took it, so a refusal
        # (and its message) is the one it was.
        asked = ask_stats(pool, store, entries)
        proved = possession.require_held(
            engine, store, principal, [e for e in entries if e.sha256 not in received], asked)
        return _publish_held(session, store, engine, pool, principal=principal, owner=owner, name=name, kind=kind,
                             entries=entries, message=message, tags=tags, private=private, parent=parent,
                             client=client, received=received, proved=proved, asked=asked, adapter_id=adapter_id)


def _publish_held(
    session: Session, store: BlobStore, engine: Engine, pool: Executor, *, principal: Principal, owner: str,
    name: str, kind: Kind, entries: list[FileEntry], message: str, tags: Sequence[str], private: bool | None,
    parent: str | None | bool, client: str, received: frozenset[str], proved: dict[str, int],
    asked: Mapping[str, Future[BlobStat | None]] | None = None, adapter_id: int | None = None,
) -> tuple[Adapter, Revision, bool]:
    """:func:`publish` once the caller is known to hold every blob: the
    store's round trips go out together on ``pool`` (the reads validation
    needs first start while the blobs are checked), each answer taken in the
    order the checks always took them, so the same first fault is reported."""
    # Only after require_held: the bytes of a blob the caller does not hold are never read.
    early = {e.sha256: pool.submit(read_back, store, e) for e in entries if e.path in (CONFIG_NAME, WEIGHTS_NAME)}
    verify_outside(engine, store, principal, entries, pool, asked)

    kept: dict[str, bytes] = {}  # what base_compat reads again (config, weights header) is not fetched twice

    @contextmanager
    def open_stored(entry: FileEntry) -> Iterator[BinaryIO]:
        if entry.sha256 in kept:
            yield io.BytesIO(kept[entry.sha256])
            return
        asked = early.pop(entry.sha256, None)
        data = (read_back(store, entry) if asked is None else asked.result()).getvalue()  # no copy
        if sum(map(len, kept.values())) + len(data) <= KEEP_BYTES:
            kept[entry.sha256] = data
        yield io.BytesIO(data)

    meta = validate_manifest(kind, entries, open_stored)
    if isinstance(meta, AdapterMeta):
        try:
            base_compat.check_base(engine, store, principal=principal, meta=meta, entries=entries,
                                   open_stored=open_stored)
        except InvalidAdapterError:
            _discard_own(engine, store, principal, entries)
            raise
    # The write transaction: the blobs' rows locked, each blob seen still
    # stored (a gc may have run meanwhile) and trusted, then the revision.
    rows = ledger.lock(session, {e.sha256: e.size for e in entries})
    for entry, stat in zip(entries, _stats(pool, store, entries), strict=True):
        verify_blob(session, store, principal, entry, rows.get(entry.sha256), stat)
    ledger.release(session, rows)  # referenced from now on: the push's lease has done its work
    assert principal.user.id is not None  # a stored row
    receipts = {**proved, **{e.sha256: e.size for e in entries if e.sha256 in received}}
    for sha256, size in sorted(receipts.items()):
        possession.record_receipt(session, user_id=principal.user.id, sha256=sha256, size=size)
    adapter, revision, created = crud.publish_revision(
        session, owner=owner, name=name, entries=entries, meta=meta, sha=manifest_digest(entries),
        author=principal.user.name, message=message, tags=list(tags), private=private, parent=parent,
        principal=principal, adapter_id=adapter_id,
    )
    events.pushed(session, adapter=adapter, revision=revision)
    audit.record(session, actor=principal.user.name, action="push", target=f"{owner}/{name}@{revision.sha}",
                 client=client, detail={"created": created, "tags": ["main", *tags], "files": len(entries)})
    return adapter, revision, created


def _check_kind(engine: Engine, owner: str, name: str, kind: Kind) -> None:
    """Refuse early, before any store read, a push of one kind into a repo of
    the other (``crud.publish_revision`` checks again under the write lock)."""
    with Session(engine) as session:
        adapter = crud.find_adapter(session, owner=owner, name=name)
        if adapter is not None and adapter.kind != kind and "main" in crud.tags_of(session, adapter=adapter):
            raise kind_mismatch(f"{adapter.owner}/{adapter.name}", adapter.kind, kind)


def _discard_own(engine: Engine, store: BlobStore, principal: Principal, entries: list[FileEntry]) -> None:
    """Take back the caller's own unreferenced uploads of a push refused as
    not fitting its base, so the refusal leaves nothing stored (as a blob that
    fails verification is discarded; blobs a revision or another user holds stay)."""
    with Session(engine) as session:
        ledger.lock(session, {e.sha256: e.size for e in entries})
        kept = [sha256 for sha256 in sorted({e.sha256 for e in entries})
                if not possession.discard_if_own(session, store, principal, sha256)]
        referenced = session.exec(select(RevisionFile.sha256).where(col(RevisionFile.sha256).in_(kept))).all()
        ledger.release(session, referenced)  # a revision holds them: this push's lease guards nothing
        session.commit()
