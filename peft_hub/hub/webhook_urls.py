"""Where a webhook may point: the checks a hook's URL must pass.

A hook's URL may not reach the hub's own network: every address its host
resolves to must be public (unless ``webhook_allow_private``), checked when
the hook is added (:func:`check_url`) and again at each send
(:func:`resolve`, called by :mod:`peft_hub.hub.webhooks`, which connects to the
address it checked, so DNS cannot change between the check and the connection).
"""

from __future__ import annotations

import ipaddress
import socket

import httpx

from peft_hub.errors import InvalidInputError
from peft_hub.safeparse import one_line

MAX_URL_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}


def is_public(address: str) -> bool:
    """Whether ``address`` is a global unicast address (not loopback, private, link-local, ...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses ``host`` resolves to, all of them public unless ``allow_private``.

    Raises:
        InvalidInputError: the host does not resolve, or one of its addresses is not public.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInputError(f"cannot resolve the webhook host {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses if not allow_private else ():
        if not is_public(address):
            raise InvalidInputError(
                f"the webhook host {host!r} resolves to {address}, a loopback, private or link-local address: "
                "refused (an operator may allow it with PEFT_HUB_WEBHOOK_ALLOW_PRIVATE=1)")
    return addresses


def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if a hook may send to it: http(s), a host, no credentials, a public address."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or not url.isprintable() or " " in url:
        raise InvalidInputError(f"a webhook URL is a printable http(s) URL of at most {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidInputError(f"invalid webhook URL: {one_line(str(exc), 200)}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError("a webhook URL must be http:// or https:// with a host")
    if parsed.userinfo:
        raise InvalidInputError("a webhook URL cannot carry credentials; the signature authenticates the hub")
    resolve(parsed.host, parsed.port or DEFAULT_PORTS[parsed.scheme], allow_private=allow_private)
    return url


def shown(url: str) -> str:
    """``url`` without its query (which may carry a key), for logs and the audit log."""
    try:
        return str(httpx.URL(url).copy_with(query=None, fragment=None))
    except (httpx.InvalidURL, ValueError, TypeError):
        return "<invalid URL>"
