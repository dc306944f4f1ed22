"""Garbage collection: delete blobs no revision references, page by page.

:func:`run` lists the store in sha256 order, :data:`PAGE` objects at a time
(``BlobStore.iterate(start_after=…)``), and holds no transaction across the
listing: each page's references are one short query, and each deletion is a
short transaction of its own holding the blob's ledger lock
(:func:`peft_hub.hub.ledger.collect`), so a publish racing the gc either
keeps the blob or is told to upload it again. Memory stays bounded by a page.

A run is bounded (``max_objects``) and resumable: every event carries
``cursor``, the last sha256 listed, and a run given ``start_after=cursor``
goes on from there. Its events, which the admin route streams as NDJSON
(as it does fsck's):

- ``{"event": "start", "start_after", "grace_seconds", "dry_run"}``;
- ``{"event": "progress", "objects_listed", "deleted", "bytes_freed", "kept_in_grace", "cursor"}`` after each page;
- ``{"event": "done", "report": {...}}`` last (``report["complete"]``: the
  listing reached the end; else resume at ``report["cursor"]``), or
  ``{"event": "error", "error", "detail", "cursor"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from itertools import islice
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from peft_hub.errors import PeftHubError, error_from_code
from peft_hub.hub import audit, ledger
from peft_hub.hub.models import RevisionFile, utcnow
from peft_hub.hub.storage import BlobStat, BlobStore
from peft_hub.safeparse import one_line

log = logging.getLogger("peft_hub.hub")

#: Objects listed (and their references looked up) at a time.
PAGE = 500


def run(
    engine: Engine, store: BlobStore, *, grace_seconds: int, dry_run: bool, stale_upload_seconds: float,
    actor: str, client: str = "", start_after: str | None = None, max_objects: int | None = None,
    page: int = PAGE,
) -> Iterator[dict[str, Any]]:
    """Collect unreferenced blobs older than ``grace_seconds``; yield events
    (see the module docstring). Failures end the stream with an ``error``
    event that still says where to resume."""
    job = _Job(grace_seconds, dry_run, start_after)
    yield {"event": "start", "start_after": start_after, "grace_seconds": grace_seconds, "dry_run": dry_run}
    try:
        yield from job.pages(engine, store, max_objects, page)
        if job.complete and not dry_run:  # what killed writers left behind, once the whole store was seen
            job.report["stale_uploads_removed"] = store.sweep_stale(stale_upload_seconds)
    except PeftHubError as exc:
        yield {"event": "error", **exc.to_dict(), "cursor": job.cursor}
        return
    except Exception as exc:  # the stream has started: report the failure, do not drop it
        log.exception("gc failed")
        yield {"event": "error", "error": PeftHubError.code, "cursor": job.cursor,
               "detail": f"gc failed: {type(exc).__name__}: {one_line(str(exc), 500)}"}
        return
    report = job.finish()
    # The deletions committed one by one; the audit row commits on its own too.
    audit.record_now(engine, actor=actor, action="gc", client=client, detail={
        "deleted": len(report["deleted"]), "bytes_freed": report["bytes_freed"],
        "kept_in_grace": report["kept_in_grace"], "dry_run": dry_run, "grace_seconds": grace_seconds,
        "stale_uploads": report["stale_uploads_removed"], "start_after": start_after, "cursor": report["cursor"],
        "objects_listed": report["objects_listed"]})
    yield {"event": "done", "report": report}


class _Job:
    """One run's counters and cursor."""

    def __init__(self, grace_seconds: int, dry_run: bool, start_after: str | None) -> None:
        self.cutoff = utcnow() - timedelta(seconds=grace_seconds)
        self.dry_run, self.cursor, self.complete = dry_run, start_after, False
        self.report: dict[str, Any] = {
            "deleted": [], "bytes_freed": 0, "kept_in_grace": 0, "dry_run": dry_run, "grace_seconds": grace_seconds,
            "stale_uploads_removed": 0, "objects_listed": 0, "start_after": start_after,
        }

    def pages(self, engine: Engine, store: BlobStore, max_objects: int | None, page: int) -> Iterator[dict[str, Any]]:
        listing = store.iterate(start_after=self.cursor)
        while max_objects is None or self.report["objects_listed"] < max_objects:
            want = page if max_objects is None else min(page, max_objects - self.report["objects_listed"])
            blobs = list(islice(listing, want))
            self.complete = len(blobs) < want
            self._collect(engine, store, blobs)
            yield self._progress()
            if self.complete:
                break

    def _collect(self, engine: Engine, store: BlobStore, blobs: list[BlobStat]) -> None:
        shas = [b.sha256 for b in blobs]
        with Session(engine) as session:
            referenced = set(session.exec(
                select(RevisionFile.sha256).distinct().where(col(RevisionFile.sha256).in_(shas))
            ).all()) if shas else set()
        deleted = set()
        for blob in blobs:
            if blob.sha256 in referenced:
                continue
            if blob.modified > self.cutoff:
                self.report["kept_in_grace"] += 1
            elif self.dry_run or ledger.collect(engine, store, blob.sha256):  # re-checked under the lock
                deleted.add(blob.sha256)
                self.report["deleted"].append(blob.sha256)
                self.report["bytes_freed"] += blob.size
            else:
                self.report["kept_in_grace"] += 1
        upto = None if self.complete else (shas[-1] if shas else self.cursor)
        if not self.dry_run:  # ledger rows of planned uploads that never came, in the range just listed
            ledger.forget_unstored(engine, set(shas) - deleted, utcnow(), after=self.cursor, upto=upto)
        self.report["objects_listed"] += len(blobs)
        if shas:
            self.cursor = shas[-1]

    def _progress(self) -> dict[str, Any]:
        r = self.report
        return {"event": "progress", "objects_listed": r["objects_listed"], "deleted": len(r["deleted"]),
                "bytes_freed": r["bytes_freed"], "kept_in_grace": r["kept_in_grace"], "cursor": self.cursor}

    def finish(self) -> dict[str, Any]:
        """The report: ``cursor`` is None when the listing reached the end."""
        return {**self.report, "complete": self.complete, "cursor": None if self.complete else self.cursor}


def collect_all(events: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Run a gc to its end and return its report, raising its error if it failed."""
    for event in events:
        if event["event"] == "error":
            raise error_from_code(event["error"], event["detail"])
        if event["event"] == "done":
            return event["report"]
    raise PeftHubError("gc ended without a report")
