"""The rollout receiver's logic, apart from vLLM: check a webhook delivery and
decide which served model names it makes stale.

A delivery is trusted only when its HMAC-SHA256 signature verifies under the
shared secret; even then its ``revision`` is not used: the receiver asks the
hub where the tag points now, so a replayed or reordered delivery cannot
roll a server back.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from peft_hub.errors import AuthenticationError, InvalidInputError, InvalidNameError
from peft_hub.names import shown, validate_repo_id
from peft_hub.serving.resolve import Served
from peft_hub.signing import SIGNATURE_HEADER, verify

MAX_BODY = 64 * 1024
EVENTS = ("tag", "push", "delete")


@dataclass(frozen=True)
class Event:
    """A verified delivery."""

    delivery: str
    event: Literal["tag", "push", "delete"]
    repo: str
    tag: str | None


def webhook_secret() -> str:
    """``PEFT_HUB_WEBHOOK_SECRET``; without one every delivery is refused."""
    return os.environ.get("PEFT_HUB_WEBHOOK_SECRET", "")


def parse_delivery(secret: str, body: bytes, headers: dict[str, str]) -> Event:
    """Verify and parse one delivery (``headers`` with lower-case names).

    Raises:
        AuthenticationError: no secret configured, or a bad signature.
        InvalidInputError: a body that is too large or not a delivery.
    """
    if not secret:
        raise AuthenticationError("this receiver has no PEFT_HUB_WEBHOOK_SECRET: deliveries are refused")
    if len(body) > MAX_BODY:
        raise InvalidInputError(f"delivery body above {MAX_BODY} bytes")
    if not verify(secret, body, headers.get(SIGNATURE_HEADER.lower())):
        raise AuthenticationError(f"bad or missing {SIGNATURE_HEADER}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInputError("delivery body is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidInputError("delivery body is not a JSON object")
    event = data.get("event")
    if event not in EVENTS or headers.get("x-pefthub-event", event) != event:
        raise InvalidInputError(f"unknown or inconsistent event {shown(event, 40)}")
    repo, tag = data.get("repo"), data.get("tag")
    try:
        owner, name = validate_repo_id(repo if isinstance(repo, str) else "")
    except InvalidNameError as exc:
        raise InvalidInputError(f"delivery names no adapter: {exc}") from None
    if tag is not None and (not isinstance(tag, str) or not 0 < len(tag) <= 64):
        raise InvalidInputError(f"invalid tag {shown(tag, 80)}")
    delivery = headers.get("x-pefthub-delivery") or str(data.get("id") or "")
    return Event(delivery[:64], event, f"{owner}/{name}", tag)


def stale_names(event: Event, served: Iterable[Served]) -> tuple[list[str], list[str]]:
    """Which served names must switch to a new revision, and which must go.

    A tag move makes stale every name that follows that tag of that adapter
    (``owner/name`` follows ``main``); a delete removes every name of the
    adapter; a pinned revision never moves.

    Returns:
        ``(switch, unload)``: model names.
    """
    switch, unload = [], []
    for s in served:
        if s.repo != event.repo:
            continue
        if event.event == "delete":
            unload.append(s.name)
        elif (event.event == "tag" and s.ref_name == event.tag
              or event.event == "push" and s.ref_name == "main" and event.tag in (None, "main")):
            switch.append(s.name)
    return switch, unload


class SeenDeliveries:
    """The last few delivery ids, so a retried delivery is answered without work."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, delivery: str) -> bool:
        return bool(delivery) and delivery in self._ids

    def add(self, delivery: str) -> None:
        """Record a delivery once it has been handled (a failed one is retried by the hub)."""
        if delivery:
            self._ids[delivery] = None
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
