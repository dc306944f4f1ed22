"""Check that the store holds every blob the revisions need, byte for byte.

:func:`run` is a generator of events, which the admin route streams as NDJSON
lines so a long check shows its progress and keeps its connection alive:

- ``{"event": "start", "revisions", "blobs", "bytes", "repair"}``;
- ``{"event": "progress", "blobs_checked", "bytes_checked", "objects_listed"}``, at most every
  :data:`PROGRESS_SECONDS`;
- ``{"event": "problem", ...}``, one per blob that fails (see :func:`_problem`);
- ``{"event": "done", "report": {...}}`` last, or ``{"event": "error", "error", "detail"}``.

Every blob a revision references is read and hashed (streamed, never loaded
whole): the store's own checksum only short-cuts a mismatch, it never
vouches for bytes. Objects no revision references are counted, not deleted.

With ``repair``, the findings are written down, never acted on: a blob whose
bytes do not verify gets ``Blob.corrupt`` (preupload then asks owners to
upload it again, which repairs it), and each revision that references a
missing or corrupt blob gets ``Revision.broken`` naming those files; marks
that no longer hold are cleared. Nothing is deleted or fetched, and a blob
that changed while it was checked is left for the next run.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.errors import ConflictError, PeftHubError
from peft_hub.hub import audit, ledger
from peft_hub.hub.models import Adapter, Blob, Revision, RevisionFile, utcnow
from peft_hub.hub.storage import BlobStat, BlobStore
from peft_hub.safeparse import one_line

log = logging.getLogger("peft_hub.hub")

CHUNK = 8 * 1024 * 1024
PROGRESS_SECONDS = 0.5
#: The report lists this many problems (all are streamed and counted) ...
MAX_REPORTED = 1000
#: ... each with this many of the files that reference the blob (and their count).
MAX_FILES_PER_PROBLEM = 50
PROBLEMS = ("missing", "size_mismatch", "corrupt", "unreadable")
#: Problems that mean the stored bytes are not the blob (``Blob.corrupt``).
BAD_BYTES = frozenset({"size_mismatch", "corrupt"})
_IN_BATCH = 500
#: One check at a time per process: each reads every blob.
_RUNNING = threading.Lock()


@dataclass
class Finding:
    """What the check of one referenced blob (``sha256`` declared ``size`` bytes) found."""

    sha256: str
    size: int
    problem: str | None = None  # None: present, right size, right sha256
    stat: BlobStat | None = None  # as stat'ed before reading
    stored_size: int | None = None
    actual_sha256: str | None = None
    detail: str = ""


class _Progress:
    """Counts, and a progress event when the last one is old enough."""

    def __init__(self) -> None:
        self.blobs = self.bytes = self.listed = 0
        self.last = time.monotonic()

    def event(self) -> dict[str, Any] | None:
        """A progress event, or None when the last one is too recent."""
        if time.monotonic() - self.last < PROGRESS_SECONDS:
            return None
        return self.final()

    def final(self) -> dict[str, Any]:
        """A progress event now, however recent the last one."""
        self.last = time.monotonic()
        return {"event": "progress", "blobs_checked": self.blobs, "bytes_checked": self.bytes,
                "objects_listed": self.listed}


def run(engine: Engine, store: BlobStore, *, repair: bool, actor: str, client: str = "") -> Iterator[dict[str, Any]]:
    """Check every referenced blob; yield events (see the module docstring).

    Args:
        repair: write ``Blob.corrupt`` and ``Revision.broken`` marks (never deletes).
        actor, client: who asked, for the ``fsck`` audit event.
    """
    if not _RUNNING.acquire(blocking=False):
        yield _error(ConflictError("an fsck is already running on this hub process; wait for it to finish"))
        return
    try:
        yield from _run(engine, store, repair=repair, actor=actor, client=client)
    except PeftHubError as exc:
        yield _error(exc)
    except Exception as exc:  # the stream has started: report the failure, do not drop it
        log.exception("fsck failed")
        yield _error(PeftHubError(f"fsck failed: {type(exc).__name__}: {one_line(str(exc), 500)}"))
    finally:
        _RUNNING.release()


def _error(exc: PeftHubError) -> dict[str, Any]:
    return {"event": "error", **exc.to_dict()}


def _run(engine: Engine, store: BlobStore, *, repair: bool, actor: str, client: str) -> Iterator[dict[str, Any]]:
    with Session(engine) as session:
        wanted = [(sha, int(size)) for sha, size in session.exec(
            select(RevisionFile.sha256, RevisionFile.size).distinct()
            .order_by(col(RevisionFile.sha256), col(RevisionFile.size))
        ).all()]
        revisions = session.exec(select(func.count()).select_from(Revision)).one()
    yield {"event": "start", "revisions": revisions, "blobs": len(wanted), "bytes": sum(s for _, s in wanted),
           "repair": repair}
    progress = _Progress()
    findings: list[Finding] = []
    problems: list[dict[str, Any]] = []
    counts = dict.fromkeys(PROBLEMS, 0)
    for sha256, size in wanted:
        finding = yield from _check(store, sha256, size, progress)
        findings.append(finding)
        progress.blobs += 1
        if finding.problem is not None:
            counts[finding.problem] += 1
            with Session(engine) as session:
                problem = _problem(session, finding)
            if len(problems) < MAX_REPORTED:  # every one is streamed; the report keeps the first ones
                problems.append(problem)
            yield {"event": "problem", **problem}
        if ev := progress.event():
            yield ev
    referenced = {sha for sha, _ in wanted}
    unreferenced = {"count": 0, "bytes": 0}
    for blob in store.iterate():
        progress.listed += 1
        if blob.sha256 not in referenced:
            unreferenced["count"] += 1
            unreferenced["bytes"] += blob.size
        if ev := progress.event():
            yield ev
    yield progress.final()
    total = sum(counts.values())
    report = {
        "clean": total == 0, "repair": repair, "revisions": revisions,
        "blobs_checked": len(wanted), "bytes_checked": progress.bytes,
        "problems": problems, "problem_count": total, "counts": counts,
        "unreferenced": unreferenced, "repaired": None,
    }
    with Session(engine) as session:
        if repair:
            if session.get_bind().dialect.name == "sqlite":
                # The write lock before the first read, as in migrations.exclusive.
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            report["repaired"] = _repair(session, store, findings)
        audit.record(session, actor=actor, action="fsck", client=client, detail={
            "repair": repair, "blobs_checked": len(wanted), "bytes_checked": progress.bytes, "problems": counts,
            "unreferenced": unreferenced, "repaired": report["repaired"],
        })
        session.commit()
    yield {"event": "done", "report": report}


def _check(store: BlobStore, sha256: str, size: int, progress: _Progress) -> Generator[dict[str, Any], None, Finding]:
    """Stat, then read and hash one blob, yielding progress as it goes."""
    try:
        stat = store.stat(sha256)
    except Exception as exc:  # a store error is a finding, not the end of the check
        return Finding(sha256, size, "unreadable", detail=one_line(f"{type(exc).__name__}: {exc}", 300))
    if stat is None:
        return Finding(sha256, size, "missing", detail="not in the store")
    if stat.size != size:
        return Finding(sha256, size, "size_mismatch", stat, stored_size=stat.size,
                       detail=f"stored {stat.size} bytes, the revisions declare {size}")
    if stat.verified_sha256 and stat.verified_sha256 != sha256:  # the store's own checksum already disagrees
        return Finding(sha256, size, "corrupt", stat, stat.size, stat.verified_sha256,
                       detail="the store's checksum is of other bytes")
    digest, read = hashlib.sha256(), 0
    try:
        with store.open(sha256) as fh:
            while read <= size and (block := fh.read(CHUNK)):
                digest.update(block)
                read += len(block)
                progress.bytes += len(block)
                if ev := progress.event():
                    yield ev
    except Exception as exc:  # gone meanwhile, or the store failed
        if _stat_or_none(store, sha256) is None:
            return Finding(sha256, size, "missing", detail="removed from the store while it was read")
        return Finding(sha256, size, "unreadable", stat, detail=one_line(f"{type(exc).__name__}: {exc}", 300))
    if read != size:
        return Finding(sha256, size, "size_mismatch", stat, stored_size=read,
                       detail=f"read {read} bytes, the revisions declare {size}")
    if digest.hexdigest() != sha256:
        return Finding(sha256, size, "corrupt", stat, read, digest.hexdigest(),
                       detail=f"stored bytes hash to {digest.hexdigest()}")
    return Finding(sha256, size, None, stat)


def _stat_or_none(store: BlobStore, sha256: str) -> BlobStat | None | Literal[False]:
    """The blob's stat, None when absent, False when the store cannot say."""
    try:
        return store.stat(sha256)
    except Exception:  # any store failure means it cannot say
        return False


def _problem(session: Session, finding: Finding) -> dict[str, Any]:
    """A finding as the report shows it, naming the adapters, revisions and files that need the blob."""
    where = (RevisionFile.sha256 == finding.sha256, RevisionFile.size == finding.size)
    rows = session.exec(
        select(Adapter.owner, Adapter.name, Revision.sha, RevisionFile.path)
        .join(Revision, col(Revision.id) == RevisionFile.revision_id)
        .join(Adapter, col(Adapter.id) == Revision.adapter_id)
        .where(*where).order_by(col(Adapter.owner), col(Adapter.name), col(Revision.id), col(RevisionFile.path))
        .limit(MAX_FILES_PER_PROBLEM)
    ).all()
    count = session.exec(select(func.count()).select_from(RevisionFile).where(*where)).one()
    return {
        "problem": finding.problem, "sha256": finding.sha256, "size": finding.size,
        "stored_size": finding.stored_size, "actual_sha256": finding.actual_sha256, "detail": finding.detail,
        "files": [{"adapter": f"{owner}/{name}", "revision": sha, "path": path} for owner, name, sha, path in rows],
        "file_count": count,
    }


def _unchanged(before: BlobStat | None, store: BlobStore, sha256: str) -> bool:
    """Whether the blob is as it was when checked (absent then and now, or same size and time)."""
    now = _stat_or_none(store, sha256)
    if now is False:
        return False
    if before is None or now is None:
        return before is None and now is None
    return (before.size, before.modified) == (now.size, now.modified)


def _repair(session: Session, store: BlobStore, findings: list[Finding]) -> dict[str, int]:
    """Write the findings down in one transaction (see the module docstring)."""
    insert = ledger.insert_for(session)
    out = {"blobs_marked_corrupt": 0, "blobs_cleared": 0, "revisions_marked_broken": 0, "revisions_cleared": 0,
           "skipped_changed": 0}
    bad: dict[tuple[str, int], str] = {}
    ok: set[tuple[str, int]] = set()
    for f in sorted(findings, key=lambda f: f.sha256):  # the ledger's lock order
        if f.problem == "unreadable":
            continue
        if not _unchanged(f.stat, store, f.sha256):
            out["skipped_changed"] += 1
            continue
        if f.problem is None:
            ok.add((f.sha256, f.size))
            row = session.get(Blob, f.sha256)
            if row is not None and row.corrupt:
                assert f.stat is not None  # a blob found intact was stat'ed
                row.corrupt, row.checked_mtime = False, f.stat.modified.timestamp()
                session.add(row)
                out["blobs_cleared"] += 1
            continue
        bad[(f.sha256, f.size)] = f.problem
        if f.problem in BAD_BYTES:
            stmt = insert(Blob).values(sha256=f.sha256, size=f.size, corrupt=True)
            session.exec(stmt.on_conflict_do_update(index_elements=["sha256"], set_={"corrupt": True}))
            out["blobs_marked_corrupt"] += 1
    broken: dict[int, list[dict[str, str]]] = {}
    shas = sorted({sha for sha, _ in bad})
    for i in range(0, len(shas), _IN_BATCH):
        for rid, path, sha, size in session.exec(
            select(RevisionFile.revision_id, RevisionFile.path, RevisionFile.sha256, RevisionFile.size)
            .where(col(RevisionFile.sha256).in_(shas[i:i + _IN_BATCH]))
        ).all():
            if (sha, size) in bad:
                broken.setdefault(rid, []).append({"path": path, "sha256": sha, "problem": bad[(sha, size)]})
    checked_at = utcnow().isoformat()
    for rid, files in sorted(broken.items()):
        files.sort(key=lambda f: f["path"])
        marks = {"checked_at": checked_at, "files": files}
        session.exec(update(Revision).where(col(Revision.id) == rid).values(broken=marks))
    out["revisions_marked_broken"] = len(broken)
    flagged = session.exec(select(Revision.id).where(col(Revision.broken).is_not(None))).all()
    for flagged_id in sorted({r for r in flagged if r is not None} - set(broken)):
        stored = session.exec(
            select(RevisionFile.sha256, RevisionFile.size).where(RevisionFile.revision_id == flagged_id)).all()
        if all((sha, int(size)) in ok for sha, size in stored):
            session.exec(update(Revision).where(col(Revision.id) == flagged_id).values(broken=None))
            out["revisions_cleared"] += 1
    return out
