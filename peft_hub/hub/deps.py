"""FastAPI dependencies: the session, the store, the settings and the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from peft_hub.hub.auth import Principal, authenticate
from peft_hub.hub.config import Settings
from peft_hub.hub.db import session_scope
from peft_hub.hub.storage import BlobStore


def get_db(request: Request) -> Iterator[Session]:
    yield from session_scope(request.app.state.engine)


def get_store(request: Request) -> BlobStore:
    return request.app.state.store


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def bearer_token(request: Request) -> str | None:
    """The token from ``Authorization: Bearer``, or from the web session cookie."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    web_session = request.scope.get("session")
    return web_session.get("token") if web_session else None


# scope="function": the session commits when the route returns, before the
# response is sent, so a client never sees a 201 for data not yet committed.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


def get_principal(request: Request, session: SessionDep) -> Principal | None:
    token = bearer_token(request)
    return authenticate(session, token) if token else None


StoreDep = Annotated[BlobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
PrincipalDep = Annotated[Principal | None, Depends(get_principal)]
