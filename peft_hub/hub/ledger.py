"""The blob ledger: one ``Blob`` row per stored blob, where publish and gc agree.

Publish and gc never trust timing. Each takes the write lock of the blob's
row before it looks at the store (an upsert that updates the row: a row lock
on PostgreSQL, the database's write lock on SQLite), so

- a publish holding the lock has seen the blob stored, and no gc can delete
  it before the publish commits (the gc waits, then sees the reference);
- a gc holding the lock deletes the blob and its row before it commits, so a
  publish that comes after finds the blob gone and asks for it again.

The row also remembers the store's modification time when the bytes last
verified. A local file changed since then (edited, truncated, restored from a
backup) is hashed again before it is trusted, and an upload rewrites it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import exists
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.hub.models import Blob, BlobUpload, RevisionFile, utcnow
from peft_hub.hub.storage import BlobStat, BlobStore


def _aware(moment: datetime) -> datetime:
    """Databases hand back naive UTC datetimes; compare them as aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def insert_for(session: Session):
    """The dialect's INSERT, which has ``on_conflict_do_*`` on both backends."""
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def lock(session: Session, sizes: dict[str, int]) -> dict[str, Blob]:
    """Take the write lock of each blob's row (creating missing rows), in
    sha256 order so two publishes never deadlock; return the rows."""
    insert = insert_for(session)
    for sha256 in sorted(sizes):
        stmt = insert(Blob).values(sha256=sha256, size=sizes[sha256])
        session.exec(stmt.on_conflict_do_update(index_elements=["sha256"], set_={"sha256": stmt.excluded.sha256}))
    rows = session.exec(select(Blob).where(Blob.sha256.in_(sorted(sizes)))).all()  # type: ignore[attr-defined]
    return {row.sha256: row for row in rows}


def trusted(row: Blob | None, stat: BlobStat) -> bool:
    """Whether the stored bytes may be taken as verified without reading them:
    the store keeps a checksum of its own (S3), or the file has not changed
    since the hub last verified it."""
    if stat.verified_sha256 == stat.sha256:
        return True
    return row is not None and not row.corrupt and row.checked_mtime == stat.modified.timestamp()


def hash_stored(store: BlobStore, sha256: str) -> str:
    """The sha256 of the stored bytes, streamed."""
    return store.stored_sha256(sha256)


def note_verified(session: Session, store: BlobStore, sha256: str, size: int) -> None:
    """Record that the stored bytes of ``sha256`` were just verified."""
    stat = store.stat(sha256)
    if stat is None:
        return
    insert = insert_for(session)
    values = {"sha256": sha256, "size": size, "checked_mtime": stat.modified.timestamp(), "corrupt": False}
    stmt = insert(Blob).values(**values)
    session.exec(stmt.on_conflict_do_update(index_elements=["sha256"], set_={
        "size": size, "checked_mtime": values["checked_mtime"], "corrupt": False}))


def verified_in_store(session: Session, store: BlobStore, sha256s: Iterable[str]) -> dict[str, BlobStat]:
    """The blobs among ``sha256s`` that are stored and trusted as they are
    (see :func:`trusted`); the others must be uploaded again."""
    wanted = sorted(set(sha256s))
    rows = {r.sha256: r for r in session.exec(select(Blob).where(Blob.sha256.in_(wanted)))} if wanted else {}  # type: ignore[attr-defined]
    out = {}
    for sha256 in wanted:
        stat = store.stat(sha256)
        if stat is not None and trusted(rows.get(sha256), stat):
            out[sha256] = stat
    return out


def claim(session: Session, sizes: dict[str, int], until: datetime) -> None:
    """Lease these blobs to a pending push until ``until`` (gc keeps them)."""
    insert = insert_for(session)
    for sha256 in sorted(sizes):
        stmt = insert(Blob).values(sha256=sha256, size=sizes[sha256], claimed_until=until)
        session.exec(stmt.on_conflict_do_update(index_elements=["sha256"], set_={"claimed_until": until}))


def forget_unstored(
    engine: Engine, stored: set[str], now: datetime, *, after: str | None = None, upto: str | None = None
) -> int:
    """Drop ledger rows of blobs that are not in the store and no longer
    claimed (a push that planned an upload and never made it), among the
    sha256s in ``(after, upto]`` (None: unbounded), the range of the store a
    gc page listed; ``stored`` is what that listing found there."""
    with Session(engine) as session:
        query = select(Blob.sha256).where(col(Blob.claimed_until).is_(None) | (col(Blob.claimed_until) < now))
        if after is not None:
            query = query.where(Blob.sha256 > after)
        if upto is not None:
            query = query.where(Blob.sha256 <= upto)
        rows = session.exec(query).all()
        gone = [sha for sha in rows if sha not in stored]
        for start in range(0, len(gone), 500):
            session.exec(Blob.__table__.delete().where(Blob.sha256.in_(gone[start:start + 500])))  # type: ignore[attr-defined]  # a table model's __table__ exists at run time
        session.commit()
    return len(gone)


def release(session: Session, sha256s: Iterable[str]) -> None:
    """End the leases of blobs a commit now references (their rows are locked)."""
    session.exec(Blob.__table__.update().where(Blob.sha256.in_(sorted(set(sha256s)))).values(claimed_until=None))  # type: ignore[attr-defined]  # a table model's __table__ exists at run time


def collect(engine: Engine, store: BlobStore, sha256: str, *, spare_receipts: bool = False) -> bool:
    """Delete one unreferenced blob, in its own short transaction holding the
    blob's row lock. Returns False (and keeps it) when, under the lock, a
    revision references it or a pending push's lease (:func:`claim`) holds
    it; with ``spare_receipts``, also when anyone holds a receipt for it."""
    with Session(engine) as session:
        stat = store.stat(sha256)
        if stat is None:
            return False
        row = lock(session, {sha256: stat.size}).get(sha256)
        leased = row is not None and row.claimed_until is not None and _aware(row.claimed_until) > utcnow()
        referenced = session.exec(select(exists().where(col(RevisionFile.sha256) == sha256))).one()
        claimed = spare_receipts and session.exec(select(exists().where(col(BlobUpload.sha256) == sha256))).one()
        if referenced or claimed or leased:
            session.rollback()
            return False
        store.delete(sha256)
        session.exec(BlobUpload.__table__.delete().where(BlobUpload.sha256 == sha256))  # type: ignore[attr-defined]  # a table model's __table__ exists at run time
        session.exec(Blob.__table__.delete().where(Blob.sha256 == sha256))  # type: ignore[attr-defined]  # a table model's __table__ exists at run time
        session.commit()
    return True
