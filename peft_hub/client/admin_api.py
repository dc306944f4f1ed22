"""The operator and account half of :class:`peft_hub.client.HubClient`:
tokens, organisations, the audit log, gc and fsck."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import httpx

from peft_hub.client.http import clean_text, raise_for_status
from peft_hub.errors import HubUnreachableError, PeftHubError, error_from_code
from peft_hub.progress import tqdm


class AdminMixin:
    """Methods for accounts and operators; ``HubClient`` supplies ``_json``, ``http`` and ``url``."""

    http: httpx.Client
    url: str

    def _json(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def create_token(
        self, *, scope: str = "read", namespace: str | None = None, limit: list[str] | None = None, name: str = "",
        expires_at: datetime | None = None,
    ) -> dict[str, Any]:
        """Ask the hub for a new token; its plaintext is in ``["token"]``, shown once.

        Anyone may create tokens for themselves, with no more scope, limits or
        lifetime than their own token; an admin may create them for any user.

        Args:
            scope: read, write or admin (admin only for admin users).
            namespace: the user the token acts as (an admin's choice; created if new); default: you.
            limit: restrict the token to these namespaces.
            name: a label shown by :meth:`list_tokens`.
            expires_at: when the token stops working (naive times are UTC); default: never.
        """
        body = {"scope": scope, "namespace": namespace, "limit": limit, "name": name,
                "expires_at": expires_at.isoformat() if expires_at else None}
        return self._json("POST", "/api/tokens", json=body)

    def list_tokens(self, *, user: str | None = None) -> list[dict[str, Any]]:
        """Your tokens (an admin may name another ``user``): ids, scopes, limits, times; never secrets."""
        return self._json("GET", "/api/tokens", params={"user": user} if user else None)

    def revoke_token(self, token_id: int) -> None:
        """Revoke one of your tokens (an admin: anyone's); its web sign-ins end too."""
        self._json("DELETE", f"/api/tokens/{int(token_id)}")

    def audit(
        self, *, actor: str | None = None, action: str | None = None, since: datetime | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Audit events, newest first (needs an admin token without namespace limits)."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("actor", actor), ("action", action), ("since", since.isoformat() if since else None)):
            if value:
                params[key] = value
        return self._json("GET", "/api/admin/audit", params=params)

    def add_member(self, org: str, user: str) -> dict[str, Any]:
        """Add ``user`` to organisation ``org`` (needs an admin token)."""
        return self._json("PUT", f"/api/orgs/{org}/members/{user}")

    def gc(self, *, grace_seconds: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Delete unreferenced blobs older than the grace period (admin)."""
        return self._json("POST", "/api/admin/gc", json={"grace_seconds": grace_seconds, "dry_run": dry_run})

    def fsck_events(self, *, repair: bool = False) -> Iterator[dict[str, Any]]:
        """The hub's fsck as it runs (admin): ``start``, ``progress`` and
        ``problem`` events, then ``done`` with the report. An ``error`` event
        is raised as the error it names; so is a stream that stops early."""
        try:
            with self.http.stream("POST", "/api/admin/fsck", json={"repair": repair}) as response:
                raise_for_status(response)
                for event in _ndjson(response.iter_bytes()):
                    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
                        raise PeftHubError("the hub sent an fsck event that is not an object with an 'event' name")
                    if event["event"] == "error":
                        raise error_from_code(str(event.get("error")), clean_text(str(event.get("detail", ""))))
                    if event["event"] == "done" and not isinstance(event.get("report"), dict):
                        raise PeftHubError("the hub's fsck report is not an object")
                    yield event
                    if event["event"] == "done":
                        return
        except httpx.TransportError as exc:
            raise HubUnreachableError(f"cannot reach {self.url}: {exc}") from exc
        raise PeftHubError("the hub's fsck stream ended before its report")

    def fsck(self, *, repair: bool = False) -> dict[str, Any]:
        """Check on the hub that every blob a revision references is stored
        with the right size and sha256, with a progress bar (admin).

        Args:
            repair: mark blobs whose bytes do not verify as corrupt (owners are
                then asked to upload them again) and the revisions that need a
                missing or corrupt blob as broken. Nothing is ever deleted.

        Returns:
            The report: ``clean``, ``problems`` (each naming the ``files`` —
            adapter, revision, path — that need the blob), ``counts``,
            ``unreferenced`` objects (count and bytes) and what ``repaired`` marked.
        """
        with tqdm(total=0, unit="B", unit_scale=True, desc="fsck") as bar:
            for event in self.fsck_events(repair=repair):
                kind = event["event"]
                if kind == "start" and isinstance(event.get("bytes"), int):
                    bar.total = event["bytes"]
                    bar.refresh()
                elif kind == "progress" and isinstance(event.get("bytes_checked"), int):
                    bar.update(max(0, event["bytes_checked"] - bar.n))
                elif kind == "done":
                    return event["report"]
        raise PeftHubError("the hub's fsck stream ended before its report")  # fsck_events raises first


#: The longest NDJSON line read from the hub (a report of many problems is a few MB).
NDJSON_LINE_LIMIT = 32 * 1024 * 1024


def _ndjson(chunks: Iterable[bytes], limit: int = NDJSON_LINE_LIMIT) -> Iterator[Any]:
    """Parse a stream of newline-separated JSON values, no line longer than ``limit``."""
    buffer = bytearray()
    for chunk in chunks:
        start = len(buffer)
        buffer += chunk
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            start = 0
            if line.strip():
                yield _json_line(line)
        if len(buffer) > limit:
            raise PeftHubError(f"the hub sent a line longer than {limit} bytes")
    if buffer.strip():
        yield _json_line(bytes(buffer))


def _json_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        raise PeftHubError("the hub sent a line that is not JSON") from None
