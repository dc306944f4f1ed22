"""The web catalog, served by the hub itself: server-rendered pages over the
same search, lineage and eval queries as the API, with no front-end build and
nothing loaded from outside the hub.

Pages: ``/`` (catalog), ``/{owner}``, ``/{owner}/{name}[@rev]``, ``/compose``,
``/login`` and ``/logout``; static files under ``/static/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.convertors import Convertor, register_url_convertor
from starlette.staticfiles import StaticFiles

from peft_hub.hub.config import Settings
from peft_hub.hub.deps import SESSION_COOKIE  # noqa: F401 - the cookie's name, re-exported

STATIC = Path(__file__).resolve().parent.parent / "static"

#: Path prefixes that are never an owner: the API and the static files.
RESERVED_PREFIXES = ("api", "static")
#: One-segment pages of the catalog (an owner by such a name keeps its adapter pages).
RESERVED_PAGES = ("compose", "login", "logout")
#: A namespace or adapter name as ``names.NAME_RE`` allows it, any case (the hub finds ``Alice/X`` as
#: ``alice/x``); the reserved words below are refused in any case too.
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?"
_TAG = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


class NamespaceConvertor(Convertor):
    """An owner in ``/{owner}/{name}``: any namespace name but ``api`` and ``static``."""

    regex = rf"(?!(?i:{'|'.join(RESERVED_PREFIXES)})(?:/|$)){_NAME}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class OwnerConvertor(NamespaceConvertor):
    """``/{owner}`` alone: also not one of the catalog's own one-segment pages."""

    regex = rf"(?!(?i:{'|'.join(RESERVED_PREFIXES + RESERVED_PAGES)})$){_NAME}"


class RefConvertor(NamespaceConvertor):
    """``name`` or ``name@rev``, never ending in ``.git`` (the git routes' suffix)."""

    regex = rf"{_NAME}(?<!\.git)(?:@{_TAG})?"


def install(app: FastAPI, settings: Settings) -> None:
    """Add the catalog's routes and static files to the hub.

    Called last by ``create_app``, so the API and the Hugging Face–compatible
    routes are matched first; the page routes' convertors keep them from
    matching those paths anyway.
    """
    from peft_hub.hub.web import pages, signin
    from peft_hub.hub.web.render import Renderer

    register_url_convertor("hubowner", OwnerConvertor())
    register_url_convertor("hubns", NamespaceConvertor())
    register_url_convertor("hubref", RefConvertor())
    renderer = Renderer()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(signin.make_router(renderer))
    app.include_router(pages.make_router(renderer))
    # Sign-in is a server-side session (see signin.py): no session middleware,
    # and the cookie authenticates reads only (see deps.cookie_principal).
