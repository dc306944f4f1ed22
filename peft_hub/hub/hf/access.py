"""Who is calling, and which adapter they mean, in the terms the HF clients expect."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from peft_hub.errors import AdapterNotFoundError, AuthenticationError, InvalidNameError
from peft_hub.hub import cache, crud
from peft_hub.hub.auth import PREFIX, Principal
from peft_hub.hub.crud import views
from peft_hub.hub.crud.views import RepoView
from peft_hub.hub.deps import authenticate_request, bearer_token, cookie_principal, principal_on_loop, short_session
from peft_hub.hub.models import Adapter
from peft_hub.names import validate_repo_id

#: ``huggingface_hub`` raises a plain HTTP error, not RepositoryNotFoundError,
#: for a 401 carrying exactly this message.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


async def hf_principal(request: Request) -> Principal | None:
    """:func:`read_hf_principal`, in a worker thread unless the cache answers or the caller is
    anonymous (``deps.principal_on_loop``; a token that is not a peft-hub one counts as none)."""
    token = bearer_token(request)
    return await principal_on_loop(request, token if token and token.startswith(PREFIX) else None,
                                   read_hf_principal)


def read_hf_principal(request: Request, claims: cache.Claims | None = None) -> Principal | None:
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
    with cache.claiming(set() if claims is None else claims), short_session(request) as session:
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
