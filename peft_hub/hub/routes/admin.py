"""Hub-wide maintenance for admins: ``gc`` and ``fsck``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool

from peft_hub.contract import GcReport
from peft_hub.hub import fsck as checker
from peft_hub.hub import gc as collector
from peft_hub.hub.auth import Principal, require_admin
from peft_hub.hub.deps import ClientDep, PrincipalDep, StoreDep
from peft_hub.hub.schemas import GcRequest
from peft_hub.hub.storage import BlobStore

router = APIRouter(prefix="/api/admin", tags=["admin"])


class FsckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Mark corrupt blobs and broken revisions (nothing is ever deleted).
    repair: StrictBool = False


def _ndjson(events: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    for event in events:
        yield json.dumps(event, separators=(",", ":")).encode() + b"\n"


@router.post("/fsck", response_class=StreamingResponse,
             responses={200: {"description": "NDJSON events", "content": {"application/x-ndjson": {}}}})
def fsck(
    request: Request, principal: PrincipalDep, client: ClientDep, body: FsckRequest | None = None
) -> StreamingResponse:
    """Check that every blob a revision references is stored with the right
    size and sha256, and count unreferenced objects (admin). The answer is
    NDJSON, streamed as the check runs: ``start``, ``progress`` and
    ``problem`` events, then ``done`` with the report (or ``error``)."""
    principal = require_admin(principal)
    # The check outlives the route (it streams), so it takes the store itself
    # rather than a request's storage slot; one runs at a time per process.
    store = request.app.state.store
    repair = body is not None and body.repair
    events = checker.run(request.app.state.engine, store, repair=repair, actor=principal.user.name, client=client)
    # A sync iterator: Starlette runs each step in a worker thread, off the event loop.
    return StreamingResponse(_ndjson(events), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _gc_events(
    request: Request, store: BlobStore, body: GcRequest, principal: Principal, client: str
) -> Iterator[dict[str, Any]]:
    settings = request.app.state.settings
    return collector.run(
        request.app.state.engine, store, dry_run=body.dry_run, stale_upload_seconds=settings.stale_upload_seconds,
        grace_seconds=settings.gc_grace_seconds if body.grace_seconds is None else body.grace_seconds,
        actor=principal.user.name, client=client, start_after=body.start_after, max_objects=body.max_objects)


@router.post("/gc")
def gc(
    body: GcRequest, request: Request, store: StoreDep, principal: PrincipalDep, client: ClientDep
) -> dict[str, Any]:
    """Delete blobs no revision references, once older than the grace period,
    and answer with the report (see :mod:`peft_hub.hub.gc`): the whole store,
    or ``max_objects`` of it from ``start_after`` (resume at ``cursor``)."""
    principal = require_admin(principal)
    return GcReport(**collector.collect_all(_gc_events(request, store, body, principal, client))).model_dump()


@router.post("/gc/stream", response_class=StreamingResponse,
             responses={200: {"description": "NDJSON events", "content": {"application/x-ndjson": {}}}})
def gc_stream(body: GcRequest, request: Request, principal: PrincipalDep, client: ClientDep) -> StreamingResponse:
    """The same gc, streamed as NDJSON events as it goes (``start``, a
    ``progress`` per page with the ``cursor`` to resume at, then ``done`` or
    ``error``), like fsck."""
    principal = require_admin(principal)
    # The run outlives the route (it streams), so it takes the store itself, not a request's storage slot.
    events = _gc_events(request, request.app.state.store, body, principal, client)
    return StreamingResponse(_ndjson(events), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
