"""Webhooks and the deployments registry, from the client side.

Functions of a :class:`~peft_hub.client.api.HubClient`: they go through its
one HTTP session and retry policy, and raise the hub's errors as the same
classes (see :mod:`peft_hub.errors`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from peft_hub.client.api import HubClient
from peft_hub.client.http import json_body, send
from peft_hub.errors import InvalidInputError

EVENTS = ("tag", "push", "delete")


def _call(hub: HubClient, method: str, path: str, **kwargs: Any) -> Any:
    return json_body(send(hub.http, method, path, retry=hub.retry, **kwargs))


def _events(events: Iterable[str]) -> list[str]:
    chosen = [e.strip() for e in events if e.strip()]
    unknown = sorted(set(chosen) - set(EVENTS))
    if unknown or not chosen:
        raise InvalidInputError(f"events are some of {', '.join(EVENTS)}; got {', '.join(unknown) or 'none'}")
    return list(dict.fromkeys(chosen))


def add_webhook(hub: HubClient, url: str, *, secret: str, adapter: str | None = None, namespace: str | None = None,
                events: Iterable[str] = EVENTS) -> dict[str, Any]:
    """Have the hub POST signed events of ``adapter`` (``owner/name``) or of
    every adapter of ``namespace`` to ``url``.

    Args:
        secret: 16-256 characters; each body is signed with HMAC-SHA256 of it
            (``X-PeftHub-Signature-256``). The hub never shows it again.
        events: some of ``tag``, ``push`` and ``delete``.

    Returns:
        The hook as the hub stores it (its id, URL, scope and events; no secret).
    """
    if (adapter is None) == (namespace is None):
        raise InvalidInputError("give exactly one of adapter (owner/name) and namespace")
    body = {"url": url, "secret": secret, "adapter": adapter, "namespace": namespace, "events": _events(events)}
    return _call(hub, "POST", "/api/webhooks", json=body)


def list_webhooks(hub: HubClient) -> list[dict[str, Any]]:
    """Your webhooks (an admin's: every one), without secrets."""
    return _call(hub, "GET", "/api/webhooks")


def remove_webhook(hub: HubClient, id: int) -> None:
    """Remove webhook ``id`` and its delivery records."""
    _call(hub, "DELETE", f"/api/webhooks/{int(id)}")


def list_deliveries(hub: HubClient, id: int) -> list[dict[str, Any]]:
    """Webhook ``id``'s latest deliveries, newest first: status, attempts, last error, response code."""
    return _call(hub, "GET", f"/api/webhooks/{int(id)}/deliveries")


def put_deployment(hub: HubClient, server_id: str, *, url: str, base_model: str,
                   adapters: list[dict[str, Any]]) -> dict[str, Any]:
    """Register serving process ``server_id`` (or refresh it) with the adapters it serves now.

    Args:
        adapters: ``{"ref": "acme/support@prod", "repo": "acme/support",
            "ref_name": "prod", "revision": "<40 hex>"}`` each, at most 1000.
    """
    body = {"url": url, "base_model": base_model, "adapters": list(adapters)}
    return _call(hub, "PUT", f"/api/deployments/{quote(server_id, safe='')}", json=body)


def list_deployments(hub: HubClient) -> list[dict[str, Any]]:
    """The servers you registered (an admin: all), with the adapters you can read."""
    return _call(hub, "GET", "/api/deployments")


def remove_deployment(hub: HubClient, server_id: str) -> None:
    """Forget serving process ``server_id``."""
    _call(hub, "DELETE", f"/api/deployments/{quote(server_id, safe='')}")
