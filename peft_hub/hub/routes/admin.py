"""Hub-wide maintenance for admins: ``fsck``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, StrictBool

from peft_hub.hub import fsck as checker
from peft_hub.hub.auth import require_admin
from peft_hub.hub.deps import ClientDep, PrincipalDep

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
def fsck(request: Request, principal: PrincipalDep, client: ClientDep, body: FsckRequest | None = None) -> StreamingResponse:
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
