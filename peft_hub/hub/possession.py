"""Who may name a blob in a commit.

Blobs are stored once per sha256, whoever uploaded them, but knowing a
sha256 never grants access to its bytes. A commit may reference a blob only
when its author has proved possession, in one of three ways:

- a *receipt*: the hub received and verified those bytes from this user
  (a hub upload, an HF LFS upload, an inline file in an HF commit);
- the S3 object itself records this user as its uploader (a presigned PUT
  signs the ``x-amz-meta-uploader`` header, and ``If-None-Match: *`` means
  only the first uploader's object ever exists);
- the blob already belongs to a revision the user may read.

Anything else must be uploaded again; the store still keeps one copy. Every
answer here depends only on what the caller holds, never on whether the
blob exists, so preupload and the LFS batch are no existence oracle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from datetime import timedelta

from sqlalchemy import exists
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.adapter import FileEntry
from peft_hub.errors import UploadRequiredError
from peft_hub.hub import crud, ledger
from peft_hub.hub.auth import Principal
from peft_hub.hub.models import Adapter, Blob, BlobUpload, Revision, RevisionFile, utcnow
from peft_hub.hub.storage import BlobStat, BlobStore


def record_receipt(session: Session, *, user_id: int, sha256: str, size: int) -> None:
    """Note that ``user_id`` holds these verified bytes (idempotent, race-safe;
    the time is that of the latest upload)."""
    stmt = ledger.insert_for(session)(BlobUpload).values(sha256=sha256, user_id=user_id, size=size, created_at=utcnow())
    session.exec(stmt.on_conflict_do_update(
        index_elements=["sha256", "user_id"], set_={"created_at": stmt.excluded.created_at}))


def record_upload(session: Session, store: BlobStore, *, user_id: int, sha256: str, size: int) -> None:
    """The hub just received and verified these bytes from ``user_id``."""
    record_receipt(session, user_id=user_id, sha256=sha256, size=size)
    ledger.note_verified(session, store, sha256, size)


def held(session: Session, principal: Principal, sha256s: Iterable[str]) -> set[str]:
    """The blobs among ``sha256s`` that the caller has proved it holds (receipts
    and readable revisions; the S3 uploader check is :func:`require_held`'s)."""
    wanted = sorted(set(sha256s))
    if not wanted:
        return set()
    receipts = session.exec(
        select(BlobUpload.sha256).where(BlobUpload.user_id == principal.user.id, col(BlobUpload.sha256).in_(wanted))
    ).all()
    readable = session.exec(
        select(RevisionFile.sha256).distinct()
        .join(Revision, col(Revision.id) == RevisionFile.revision_id)
        .join(Adapter, col(Adapter.id) == Revision.adapter_id)
        .where(col(RevisionFile.sha256).in_(wanted), crud.visible_clause(principal))
    ).all()
    return set(receipts) | set(readable)


def stored_and_held(
    session: Session, store: BlobStore, principal: Principal, entries: list[FileEntry], *, lease_seconds: int
) -> set[str]:
    """The sha256s the caller need not upload: held by the caller, stored with
    the declared size, and trusted as stored (see ``ledger.trusted``; a file
    changed in the store must be uploaded again, which repairs it). Every
    planned blob is leased to this push for ``lease_seconds``, so a gc running
    before its commit keeps it."""
    mine = held(session, principal, (e.sha256 for e in entries))
    stored = ledger.verified_in_store(session, store, [e.sha256 for e in entries if e.sha256 in mine])
    ledger.claim(session, {e.sha256: e.size for e in entries}, utcnow() + timedelta(seconds=lease_seconds))
    return {e.sha256 for e in entries if e.sha256 in stored and stored[e.sha256].size == e.size}


def require_held(
    engine: Engine, store: BlobStore, principal: Principal, entries: list[FileEntry],
    asked: Mapping[str, Future[BlobStat | None]] | None = None,
) -> dict[str, int]:
    """Raise UploadRequiredError unless the caller holds every entry's blob.

    The database is read in a short transaction of its own; the store is
    asked (for S3's recorded uploader) with none open. The message is the same
    whether or not the blob exists in the store.

    Args:
        asked: the store's answers (``store.stat``) by sha256, asked for
            already (publish asks once for all its files, while the database
            is read); an answer is taken only for a blob the database does
            not show held, in the entries' order, as when asked one by one.

    Returns:
        The blobs proved by S3's recorded uploader alone, sha256 to size: the
        caller writes their receipts in its write transaction, so a refused
        commit leaves none.
    """
    with Session(engine) as session:
        mine = held(session, principal, (e.sha256 for e in entries))
    receipts: dict[str, int] = {}
    for entry in entries:
        if entry.sha256 in mine or entry.sha256 in receipts:
            continue
        stat = store.stat(entry.sha256) if asked is None else asked[entry.sha256].result()
        if stat is not None and stat.uploader == str(principal.user.id) and stat.size == entry.size:
            receipts[entry.sha256] = stat.size
            continue
        raise UploadRequiredError(
            f"{entry.path}: blob {entry.sha256} has not been uploaded by you; upload its bytes "
            "(`peft-hub push` and huggingface_hub do this for you)"
        )
    return receipts


def discard_if_own(session: Session, store: BlobStore, principal: Principal, sha256: str) -> bool:
    """Delete a blob that failed verification, only when it is the caller's own
    unreferenced upload: never one a revision holds or another user uploaded."""
    referenced = session.exec(select(exists().where(col(RevisionFile.sha256) == sha256))).one()
    others = session.exec(
        select(exists().where(col(BlobUpload.sha256) == sha256, col(BlobUpload.user_id) != principal.user.id))
    ).one()
    if referenced or others:
        return False
    store.delete(sha256)
    forget(session, sha256=sha256)
    return True


def discard_unclaimed(engine: Engine, store: BlobStore, sha256s: list[str]) -> None:
    """Delete blobs a refused request stored itself, unless meanwhile a
    revision or a receipt (another request's) has claimed them."""
    for sha256 in sorted(set(sha256s)):
        ledger.collect(engine, store, sha256, spare_receipts=True)


def forget(session: Session, *, sha256: str) -> None:
    """Drop the receipts and the ledger row of a blob that is gone from the store."""
    session.exec(BlobUpload.__table__.delete().where(BlobUpload.sha256 == sha256))  # type: ignore[attr-defined]  # a table model's __table__ exists at run time
    session.exec(Blob.__table__.delete().where(Blob.sha256 == sha256))  # type: ignore[attr-defined]  # a table model's __table__ exists at run time


def size_for(session: Session, principal: Principal, sha256: str, path: str) -> int:
    """The size of a held blob, for HF ``lfsFile`` lines that omit it."""
    row = session.exec(
        select(BlobUpload.size).where(BlobUpload.user_id == principal.user.id, BlobUpload.sha256 == sha256)
    ).first()
    if row is None:
        row = session.exec(
            select(RevisionFile.size).join(Revision, col(Revision.id) == RevisionFile.revision_id)
            .join(Adapter, col(Adapter.id) == Revision.adapter_id)
            .where(RevisionFile.sha256 == sha256, crud.visible_clause(principal))
        ).first()
    if row is None:
        raise UploadRequiredError(f"{path}: blob {sha256} has not been uploaded by you; upload it through LFS first")
    return int(row)

