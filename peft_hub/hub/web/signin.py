"""Signing in to the catalog with an API token.

The token lives in Starlette's signed session cookie (HttpOnly, SameSite=Lax),
where ``deps.bearer_token`` already looks for it. Sign-in and sign-out are
POST forms carrying a CSRF token tied to the session, and the cookie never
authenticates a state-changing API call (see :class:`ReadOnlyCookieGuard`).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from peft_hub.errors import AuthenticationError
from peft_hub.hub.auth import Principal, authenticate
from peft_hub.hub.deps import SessionDep, bearer_token
from peft_hub.hub.web.render import Renderer

#: The only paths where the session cookie may authenticate a POST.
FORM_PATHS = frozenset({"/login", "/logout"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReadOnlyCookieGuard:
    """Let the session cookie authenticate reads only.

    Browsers send cookies with requests other sites trigger (SameSite=Lax
    still allows same-site ones, e.g. another app on a different localhost
    port), so a state-changing API request must present its token in a header;
    the catalog's own forms are protected by their CSRF token instead.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS and scope["path"] not in FORM_PATHS:
            scope = {**scope, "session": {}}  # a copy: the outer SessionMiddleware keeps the real one
        await self.app(scope, receive, send)


def web_principal(request: Request, session: SessionDep) -> Principal | None:
    """The signed-in caller, or None. A revoked token signs the browser out
    instead of turning every page into an error."""
    token = bearer_token(request)
    if not token:
        return None
    try:
        return authenticate(session, token)
    except AuthenticationError:
        if request.session.get("token") == token:
            request.session.clear()
        return None


WebPrincipal = Annotated[Principal | None, Depends(web_principal)]


def csrf_token(request: Request) -> str:
    """This session's CSRF token, created on first use."""
    if not request.session.get("csrf"):
        request.session["csrf"] = secrets.token_urlsafe(32)
    return request.session["csrf"]


def csrf_ok(request: Request, presented: str) -> bool:
    expected = request.session.get("csrf") or ""
    origin = request.headers.get("origin")
    if origin and origin != str(request.base_url).rstrip("/"):
        return False
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


def safe_next(target: str | None) -> str:
    """Only redirect to a path on this hub (never ``//evil`` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def make_router(renderer: Renderer) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/login")
    def login_form(request: Request, principal: WebPrincipal, next: str = "/") -> Response:
        csrf_token(request)
        return renderer.page(request, "login.html", next=safe_next(next), error=None, principal=principal)

    @router.post("/login")
    def login(
        request: Request, session: SessionDep,
        token: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",
    ) -> Response:
        target = safe_next(next)
        if not csrf_ok(request, csrf):
            csrf_token(request)
            return renderer.page(request, "login.html", 403, next=target, principal=None,
                                 error="The form expired or came from another site. Please try again.")
        try:
            principal = authenticate(session, token.strip())
        except AuthenticationError:
            return renderer.page(request, "login.html", 401, next=target, principal=None,
                                 error="That token is not valid (or has been revoked).")
        request.session.clear()  # a fresh session, with a fresh CSRF token
        request.session.update(token=token.strip(), user=principal.user.name, csrf=secrets.token_urlsafe(32))
        return RedirectResponse(target, status_code=303)

    @router.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        if csrf_ok(request, csrf):
            request.session.clear()
        return RedirectResponse("/", status_code=303)

    return router
