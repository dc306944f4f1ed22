"""Jinja2 rendering for the catalog: one autoescaping environment, the
filters the templates share, and the security headers every page carries."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import ChainableUndefined, Environment, FileSystemLoader
from markupsafe import Markup, escape

from peft_hub import __version__
from peft_hub.units import human_size

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

#: Pages load nothing from elsewhere and run only our own script file; inline
#: SVG is markup, not script, so it needs no exception.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",  # pages differ by who is signed in
}


def filesize(n: int | None) -> str:
    """Bytes as a short human size (IEC units, as the CLI prints them)."""
    return human_size(n, missing="–")


def number(value: float | None) -> str:
    """An eval value: up to four significant decimals, no float noise."""
    if value is None or not math.isfinite(value):
        return "–" if value is None else str(value)
    if value != 0 and abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.1f}"


def isodate(value: datetime | None) -> str:
    """Machine-readable UTC time for ``<time datetime=…>``."""
    if value is None:
        return ""
    if value.tzinfo is None:  # SQLite drops the zone; the hub writes UTC
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """A short relative time: '5 min ago', '3 days ago', or the date."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    seconds = ((now or datetime.now(timezone.utc)) - value).total_seconds()
    for limit, div, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h"), (86400 * 30, 86400, "day")):
        if seconds < limit:
            amount = max(int(seconds // div), 0)
            if unit == "s":
                return "just now"
            return f"{amount} {unit}{'s' if unit == 'day' and amount != 1 else ''} ago"
    return value.strftime("%Y-%m-%d")


def breakable(text: str | None) -> Markup:
    """Escaped text that may wrap after '/' and '-' (long model names in narrow cells)."""
    escaped = str(escape(text or ""))
    return Markup(re.sub(r"([/_-])", r"\1<wbr>", escaped))


def make_env() -> Environment:
    # Lenient undefined: a revision's stored metadata may predate a field, and
    # a missing key should print nothing rather than fail the page.
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=ChainableUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(filesize=filesize, number=number, isodate=isodate, ago=ago, breakable=breakable,
                       short=lambda sha: (sha or "")[:8])
    env.globals.update(version=__version__)
    return env


class Renderer:
    """Renders a template with what every page needs (user, CSRF token, hub URL)."""

    def __init__(self) -> None:
        self.env = make_env()

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        session = request.scope.get("session") or {}
        base = {
            "request": request, "path": request.url.path,
            "hub_url": str(request.base_url).rstrip("/"),
            "user": session.get("user"),  # set only for a live server-side session (deps.cookie_principal)
            "csrf_token": session.get("csrf", ""),
        }
        html = self.env.get_template(template).render(**base, **context)
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
