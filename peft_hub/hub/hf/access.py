"""Who is calling, and which adapter they mean, in the terms the HF clients expect."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlmodel import Session

from peft_hub.errors import AdapterNotFoundError, AuthenticationError, InvalidNameError
from peft_hub.hub import crud
from peft_hub.hub.auth import PREFIX, Principal
from peft_hub.hub.crud import views
from peft_hub.hub.crud.views import RepoView
from peft_hub.hub.deps import authenticate_request, bearer_token, cookie_principal, fast_principal, short_session
from peft_hub.hub.models import Adapter
from peft_hub.names import validate_repo_id

#: ``huggingface_hub`` raises a plain HTTP error, not RepositoryNotFoundError,
#: for a 401 carrying exactly this message.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


async def hf_principal(request: Request) -> Principal | None:
    """:func:`read_hf_principal`, in a worker thread unless the cache answers."""
    token = bearer_token(request)
    principal = fast_principal(request, token if token and token.startswith(PREFIX) else None)
    if principal is not None:
        return principal
    return await run_in_threadpool(read_hf_principal, request)


def read_hf_principal(request: Request) -> Principal | None:
    """The caller, from ``Authorization: Bearer``, found in a short session
    of its own (see ``deps.request_principal``).

    A token that is not a peft-hub token at all (say a huggingface.co ``hf_…``
    token that the client found in its own config) is ignored, so a machine
    logged in to huggingface.co can still read public adapters. A peft-hub
    token that is wrong or revoked is refused.
    """
    token = bearer_token(request)
    if token and not token.startswith(PREFIX):
        return None
    with short_session(request) as session:
        if not token:
            return cookie_principal(request, session)  # a signed-in browser, for reads
        try:
            return authenticate_request(request, session, token)
        except AuthenticationError:
            raise AuthenticationError(INVALID_CREDENTIALS) from None


HfPrincipalDep = Annotated[Principal | None, Depends(hf_principal)]


def load_adapter(session: Session, principal: Principal | None, owner: str, name: str) -> Adapter:
    """The adapter if the caller may see it; a malformed id is just as missing."""
    owner, name = _repo_id(owner, name)
    return crud.get_adapter(session, owner=owner, name=name, principal=principal)


def read_view(session: Session, principal: Principal | None, owner: str, name: str) -> RepoView:
    """:func:`load_adapter` for the read routes: the shared, read-only view
    with the tags (see ``crud.views.read_repo``)."""
    owner, name = _repo_id(owner, name)
    return views.read_repo(session, owner=owner, name=name, principal=principal)


def _repo_id(owner: str, name: str) -> tuple[str, str]:
    try:
        return validate_repo_id(f"{owner}/{name}")
    except InvalidNameError as exc:
        raise AdapterNotFoundError(f"repository {owner}/{name} not found ({exc.message})") from None
