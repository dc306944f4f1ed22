"""Signing in to the catalog with an API token.

The browser gets a server-side session: its cookie holds only a random id
(``secrets.token_urlsafe(32)``); the ``WebSession`` row holds the id's sha256,
the token's row id, a CSRF token and an expiry. The token itself is never
stored in the browser. Sign-out deletes the row; revoking the token deletes
its sessions; an expired token or session ends the sign-in.

Both cookies are HttpOnly and SameSite=Lax (Secure with
``settings.secure_cookies``). Sign-in and sign-out are POST forms with a CSRF
token: before sign-in it is the ``peft_hub_csrf`` cookie's value, after it the
session's. The session cookie never authenticates a state-changing API call
(see ``deps.cookie_principal``): browsers send cookies with requests other
sites trigger (SameSite=Lax still allows same-site ones, e.g. another app on a
different localhost port), so a change must present its token in a header.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session

from peft_hub.errors import AuthenticationError, RateLimitedError
from peft_hub.hub import crud
from peft_hub.hub.auth import Principal
from peft_hub.hub.deps import SESSION_COOKIE, SessionDep, authenticate_request, get_principal
from peft_hub.hub.models import Namespace, Token, WebSession, utcnow
from peft_hub.hub.web.render import Renderer

#: Holds the sign-in form's CSRF token before there is a session.
CSRF_COOKIE = "peft_hub_csrf"


def web_principal(request: Request, session: SessionDep) -> Principal | None:
    """The signed-in caller, or None: a bad token in a header, or a session
    whose token was revoked or expired, just shows the pages signed out."""
    try:
        return get_principal(request, session)
    except AuthenticationError:
        return None


WebPrincipal = Annotated[Principal | None, Depends(web_principal)]


def cookie_options(request: Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "lax", "secure": request.app.state.settings.secure_cookies, "path": "/"}


def current_session(request: Request, session: Session) -> WebSession | None:
    found = crud.resolve_web_session(session, raw_id=request.cookies.get(SESSION_COOKIE, ""))
    return found[0] if found else None


def bind_page(request: Request, session: Session) -> str | None:
    """Leave the signed-in user and the forms' CSRF token where the renderer
    looks. Returns a new pre-session CSRF token to set as a cookie, if one was made."""
    if request.scope.get("session"):
        return None
    found = crud.resolve_web_session(session, raw_id=request.cookies.get(SESSION_COOKIE, ""))
    if found is not None:
        web, token = found
        user = session.get(Namespace, token.user_id)
        request.scope["session"] = {"user": user.name if user else None, "csrf": web.csrf}
        return None
    anonymous = request.cookies.get(CSRF_COOKIE, "")
    fresh = None
    if not 32 <= len(anonymous) <= 64:
        anonymous = fresh = secrets.token_urlsafe(32)
    request.scope["session"] = {"user": None, "csrf": anonymous}
    return fresh


def csrf_ok(request: Request, presented: str, *expected: str) -> bool:
    """The form came from this hub and carries one of the ``expected`` tokens."""
    origin = request.headers.get("origin")
    if origin and origin != str(request.base_url).rstrip("/"):
        return False
    return any(e and hmac.compare_digest(e.encode(), presented.encode()) for e in expected)


def safe_next(target: str | None) -> str:
    """Only redirect to a path on this hub (never ``//evil`` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def make_router(renderer: Renderer) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def form(request: Request, session: Session, status: int, target: str, error: str | None,
             principal: Principal | None = None, headers: dict[str, str] | None = None) -> Response:
        fresh = bind_page(request, session)
        response = renderer.page(request, "login.html", status, next=target, principal=principal, error=error)
        response.headers.update(headers or {})
        if fresh:
            response.set_cookie(CSRF_COOKIE, fresh, **cookie_options(request))
        return response

    @router.get("/login")
    def login_form(request: Request, session: SessionDep, principal: WebPrincipal, next: str = "/") -> Response:
        return form(request, session, 200, safe_next(next), None, principal)

    @router.post("/login")
    def login(
        request: Request, session: SessionDep,
        token: Annotated[str, Form()] = "", csrf: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",
    ) -> Response:
        target, token = safe_next(next), token.strip()
        current = current_session(request, session)
        if not csrf_ok(request, csrf, request.cookies.get(CSRF_COOKIE, ""), current.csrf if current else ""):
            return form(request, session, 403, target, "The form expired or came from another site. Please try again.")
        if not token:
            return form(request, session, 401, target, "Paste an API token to sign in.")
        try:
            principal = authenticate_request(request, session, token)
        except RateLimitedError as exc:
            return form(request, session, 429, target, f"Too many failed sign-ins. Try again in {exc.retry_after} s.",
                        headers={"Retry-After": str(exc.retry_after)})
        except AuthenticationError:
            return form(request, session, 401, target, "That token is not valid (or has expired or been revoked).")
        if current is not None:
            session.delete(current)  # a fresh session id and CSRF token on every sign-in
        lifetime = timedelta(seconds=request.app.state.settings.web_session_seconds)
        web, raw = crud.create_web_session(session, token=session.get_one(Token, principal.token_id),
                                           expires_at=utcnow() + lifetime)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, raw, max_age=int(lifetime.total_seconds()), **cookie_options(request))
        return response

    @router.post("/logout")
    def logout(request: Request, session: SessionDep, csrf: Annotated[str, Form()] = "") -> Response:
        response = RedirectResponse("/", status_code=303)
        current = current_session(request, session)
        if current is not None and csrf_ok(request, csrf, current.csrf):
            session.delete(current)
            response.delete_cookie(SESSION_COOKIE, **cookie_options(request))
        return response

    return router
